//! CrowdSec's AppSec component (its WAF), asked about every request that the IP check
//! allowed: one HTTP client, one key, one set of metrics, used by both doors.
//!
//! A call carries the `X-Crowdsec-Appsec-*` headers (client IP, URI, host, verb, the
//! bouncer key, user agent, HTTP version as two digits, `11` or `20`), the request's own
//! headers (hop-by-hop headers and any `X-Crowdsec-Appsec-*` a client sent left out), and
//! the body. The component answers 200 (allow), 403 with `{"action","http_status"}` (ban,
//! or captcha when the action says so), 401 (unknown key) or 500 (a request it cannot
//! parse); see crowdsec v1.7.8 `pkg/acquisition/modules/appsec/config.go`,
//! `appsecHandler`, and `pkg/appsec/request.go`, `NewParsedRequestFromRequest`. Anything
//! but a verdict (401, 5xx, a timeout, no connection) applies `appsec_fail`.

mod answer;

pub use answer::{Failure, Verdict};

use crate::config::{AppsecConfig, AppsecFail};
use crate::metrics as names;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

/// Seconds between two log lines about AppSec failures (the others are counted).
const LOG_EVERY_S: u64 = 10;

/// Label values of `cerberus_appsec_inspections_total{outcome}`, indexed by [`Outcome`].
const OUTCOMES: [&str; 6] = [
    "allow",
    "ban",
    "captcha",
    "failed_open",
    "failed_closed",
    "body_refused",
];

/// The doors that inspect, for the `door` label.
#[derive(Debug, Clone, Copy)]
pub enum Door {
    Socket,
    ForwardAuth,
}

impl Door {
    fn label(self) -> &'static str {
        match self {
            Door::Socket => "socket",
            Door::ForwardAuth => "forward_auth",
        }
    }
}

/// One request to inspect.
#[derive(Debug, Clone)]
pub struct Inspection<'a> {
    pub ip: IpAddr,
    pub method: &'a str,
    pub uri: &'a str,
    pub host: &'a str,
    /// `1.0`, `1.1`, `2`, `3` (or `HTTP/1.1`).
    pub http_version: &'a str,
    /// The request's own headers, in order.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// At most `appsec_max_body` bytes of the body.
    pub body: Bytes,
    /// The body was longer than what `body` holds.
    pub truncated: bool,
}

/// What the door does with the request, after AppSec (and `appsec_fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Ban,
    Captcha,
    /// No verdict; served (`appsec_fail: open`).
    FailedOpen,
    /// No verdict; refused (`appsec_fail: closed`).
    FailedClosed,
    /// Body over `appsec_max_body` with `appsec_fail: closed`; refused without a call.
    BodyRefused,
}

impl Outcome {
    /// True when the request must be refused.
    pub fn refuses(self) -> bool {
        !matches!(self, Outcome::Allow | Outcome::FailedOpen)
    }

    /// The remediation a refusal is answered with: a captcha verdict is a captcha,
    /// everything else refused is a ban.
    pub fn remediation(self) -> bouncer_api::Remediation {
        match self {
            Outcome::Allow | Outcome::FailedOpen => bouncer_api::Remediation::Allow,
            Outcome::Captcha => bouncer_api::Remediation::Captcha,
            _ => bouncer_api::Remediation::Ban,
        }
    }

    pub fn as_str(self) -> &'static str {
        OUTCOMES[self as usize]
    }
}

/// The origin that AppSec refusals carry in the usage metrics.
pub const ORIGIN: &str = "appsec";

/// The AppSec client shared by both doors.
pub struct Appsec {
    client: reqwest::Client,
    url: String,
    /// The bouncer key; set later in engine mode (the managed engine's key).
    key: ArcSwapOption<String>,
    fail: AppsecFail,
    max_body: u64,
    last_log: AtomicU64,
    outcomes: [[metrics::Counter; OUTCOMES.len()]; 2],
    errors: [metrics::Counter; Failure::LABELS.len()],
    duration: metrics::Histogram,
}

impl Appsec {
    /// `None` when `appsec_url` is unset (AppSec off).
    pub fn from_config(
        config: &AppsecConfig,
        key: Option<String>,
    ) -> anyhow::Result<Option<Arc<Appsec>>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("cerberus/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let door = |d: Door| {
            OUTCOMES.map(|o| {
                metrics::counter!(names::APPSEC_INSPECTIONS, "door" => d.label(), "outcome" => o)
            })
        };
        Ok(Some(Arc::new(Appsec {
            client,
            url: url.clone(),
            key: ArcSwapOption::from(key.map(Arc::new)),
            fail: config.fail,
            max_body: config.max_body,
            last_log: AtomicU64::new(0),
            outcomes: [door(Door::Socket), door(Door::ForwardAuth)],
            errors: Failure::LABELS.map(|r| metrics::counter!(names::APPSEC_ERRORS, "reason" => r)),
            duration: metrics::histogram!(names::APPSEC_DURATION),
        })))
    }

    /// Replaces the bouncer key (engine mode: the managed engine's key, once known).
    pub fn set_key(&self, key: String) {
        self.key.store(Some(Arc::new(key)));
    }

    /// The largest body sent.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The component's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks AppSec about one request, applies `appsec_fail` when there is no verdict,
    /// counts the outcome (Prometheus by door; a refusal as dropped with origin
    /// `appsec` in the usage metrics, a captcha only when no captcha flow will).
    pub async fn inspect(
        &self,
        door: Door,
        req: Inspection<'_>,
        usage: &crate::usage::Usage,
    ) -> Outcome {
        let outcome =
            if req.truncated && self.fail == AppsecFail::Closed {
                self.log_failure(&format!(
                "a {} {} body is over appsec_max_body ({} bytes); refused (appsec_fail: closed)",
                req.method, req.uri, self.max_body
            ));
                Outcome::BodyRefused
            } else {
                let started = Instant::now();
                let answer = self.call(req).await;
                self.duration.record(started.elapsed().as_secs_f64());
                match answer {
                    Ok(Verdict::Allow) => Outcome::Allow,
                    Ok(Verdict::Ban) => Outcome::Ban,
                    Ok(Verdict::Captcha) => Outcome::Captcha,
                    Err(failure) => {
                        self.errors[failure.index()].increment(1);
                        let outcome = match self.fail {
                            AppsecFail::Open => Outcome::FailedOpen,
                            AppsecFail::Closed => Outcome::FailedClosed,
                        };
                        self.log_failure(&format!(
                        "AppSec at {} gave no verdict ({failure}); request {} (appsec_fail: {})",
                        self.url,
                        if outcome.refuses() { "refused" } else { "served" },
                        if outcome.refuses() { "closed" } else { "open" },
                    ));
                        outcome
                    }
                }
            };
        self.outcomes[door as usize][outcome as usize].increment(1);
        // A captcha verdict with the flow on is counted by the flow that answers it.
        if outcome.refuses() && !crate::captcha::counts(outcome.remediation()) {
            usage.add_dropped(ORIGIN, "", outcome.remediation().as_str());
        }
        outcome
    }

    /// Whether AppSec answers with our key: a `GET /` for the address 127.0.0.1, for
    /// `cerberus diagnose` and the status. Counts nothing.
    pub async fn probe(&self) -> Result<Verdict, Failure> {
        self.call(Inspection {
            ip: IpAddr::from([127, 0, 0, 1]),
            method: "GET",
            uri: "/",
            host: "localhost",
            http_version: "1.1",
            headers: Vec::new(),
            body: Bytes::new(),
            truncated: false,
        })
        .await
    }

    /// [`Appsec::probe`] as the diagnostics and the status show it:
    /// `{"status","url","latency_ms"}` with status `answering` (a verdict came back),
    /// `unauthorized`, `timeout`, `unreachable` or `error`, and the error's text.
    pub async fn health(&self) -> serde_json::Value {
        let started = Instant::now();
        let answer = self.probe().await;
        let ms = started.elapsed().as_millis() as u64;
        match answer {
            Ok(_) => serde_json::json!({"status": "answering", "url": self.url, "latency_ms": ms}),
            Err(f) => serde_json::json!({
                "status": match f {
                    Failure::Unauthorized => "unauthorized",
                    Failure::Timeout => "timeout",
                    Failure::Unreachable => "unreachable",
                    _ => "error",
                },
                "url": self.url,
                "latency_ms": ms,
                "error": f.to_string(),
            }),
        }
    }

    async fn call(&self, req: Inspection<'_>) -> Result<Verdict, Failure> {
        let key = self.key.load_full();
        let Some(key) = key.as_deref() else {
            return Err(Failure::NoKey);
        };
        let mut headers = reqwest::header::HeaderMap::with_capacity(req.headers.len() + 8);
        for (name, value) in &req.headers {
            if skipped(name) {
                continue;
            }
            let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            headers.append(n, v);
        }
        let ours = [
            ("x-crowdsec-appsec-ip", req.ip.to_string()),
            ("x-crowdsec-appsec-uri", req.uri.to_string()),
            ("x-crowdsec-appsec-host", req.host.to_string()),
            ("x-crowdsec-appsec-verb", req.method.to_string()),
            ("x-crowdsec-appsec-api-key", key.clone()),
            (
                "x-crowdsec-appsec-http-version",
                two_digits(req.http_version),
            ),
        ];
        for (name, value) in ours {
            let v =
                reqwest::header::HeaderValue::from_str(&value).map_err(|_| Failure::BadRequest)?;
            headers.insert(name, v);
        }
        if let Some(ua) = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
            .and_then(|(_, v)| reqwest::header::HeaderValue::from_bytes(v).ok())
        {
            headers.insert("x-crowdsec-appsec-user-agent", ua);
        }
        // The component reads the body whatever the method; GET when there is none, as
        // CrowdSec's own bouncers do.
        let method = if req.body.is_empty() {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let response = self
            .client
            .request(method, &self.url)
            .headers(headers)
            .body(req.body)
            .send()
            .await
            .map_err(|e| Failure::from_reqwest(&e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::from_reqwest(&e))?;
        answer::read(status, &body)
    }

    /// One warning per [`LOG_EVERY_S`] at most.
    fn log_failure(&self, message: &str) {
        let now = crate::clock::now_secs() as u64;
        let last = self.last_log.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY_S
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!("appsec: {message} (further failures within {LOG_EVERY_S}s are only counted)");
        }
    }
}

/// Headers not forwarded: hop-by-hop ones, those the client cannot set for us, and the
/// body framing (the call has its own).
fn skipped(name: &str) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..18)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-crowdsec-appsec-"))
}

/// `1.1` / `HTTP/1.1` → `11`, `2` / `HTTP/2.0` → `20` (CrowdSec's two-digit form).
fn two_digits(version: &str) -> String {
    let v = version.trim();
    let v = v
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("http/"))
        .map_or(v, |_| &v[5..]);
    let mut digits = v.chars().filter(char::is_ascii_digit);
    let major = digits.next().unwrap_or('1');
    let minor = digits.next().unwrap_or('0');
    format!("{major}{minor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_two_digits() {
        assert_eq!(two_digits("1.1"), "11");
        assert_eq!(two_digits("HTTP/1.0"), "10");
        assert_eq!(two_digits("2"), "20");
        assert_eq!(two_digits("HTTP/2.0"), "20");
        assert_eq!(two_digits("3"), "30");
    }

    #[test]
    fn client_headers_cannot_pose_as_ours() {
        assert!(skipped("X-Crowdsec-Appsec-Api-Key"));
        assert!(skipped("x-crowdsec-appsec-ip"));
        assert!(skipped("Transfer-Encoding"));
        assert!(skipped("Host"));
        assert!(!skipped("Cookie"));
        assert!(!skipped("X-Crowdsec"));
    }

    #[test]
    fn outcomes_refuse_or_serve() {
        assert!(!Outcome::Allow.refuses());
        assert!(!Outcome::FailedOpen.refuses());
        for o in [
            Outcome::Ban,
            Outcome::Captcha,
            Outcome::FailedClosed,
            Outcome::BodyRefused,
        ] {
            assert!(o.refuses(), "{o:?}");
        }
        assert_eq!(
            Outcome::Captcha.remediation(),
            bouncer_api::Remediation::Captcha
        );
        assert_eq!(
            Outcome::FailedClosed.remediation(),
            bouncer_api::Remediation::Ban
        );
    }
}
