//! The forward_auth door: an HTTP/1.1 endpoint for Caddy's stock `forward_auth`
//! directive, on `host:port` or `unix:/path`, answering on any path and method.
//!
//! The client IP is read from `client_ip_header` (default `X-Forwarded-For`): the list
//! (all occurrences of the header, in order) is walked from the right, skipping addresses
//! in `trusted_proxies`; the first other address is the client. The peer of this
//! listener is Caddy itself, which sets that header, so it is believed; the entries that
//! clients could have forged sit left of the first untrusted one and are never read.
//! Without the header, or when every entry is trusted, the peer address is the client
//! (a Unix socket peer has none: 400).
//!
//! Answers: allow → 200 with an empty body; ban → `ban_status` (403) with an HTML page
//! (JSON when `Accept` names only JSON types); captcha → the captcha flow of
//! [`crate::captcha`] when a provider is configured (the original request from
//! `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Proto` and `Cookie`, as Caddy's
//! forward_auth sends them; its challenge and its 303 are not 2xx, so Caddy hands them
//! to the client as they are), else the same as ban; throttle → 429 with `Retry-After`; a decision type that cerberus does
//! not map (`other`) → the same as ban. Every answer carries `X-Cerberus-Remediation`;
//! no usable client IP → 400 with a plain-text reason.

use super::{Readiness, REMEDIATION_LABELS};
use crate::appsec::{self, Appsec, Inspection};
use crate::clock;
use crate::config::Config;
use crate::metrics as names;
use crate::store::{Decider, Source};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

/// The page sent with a ban when no `ban_template` is configured.
pub const BUILTIN_TEMPLATE: &str = include_str!("ban.html");

/// The header every answer carries.
pub const REMEDIATION_HEADER: &str = "x-cerberus-remediation";

/// What every request handler shares.
pub struct Door {
    decider: Arc<Decider>,
    ready: Readiness,
    header: hyper::header::HeaderName,
    trusted: Vec<IpNet>,
    ban_status: StatusCode,
    template: String,
    request_ids: AtomicU64,
    id_seed: u64,
    meters: [metrics::Counter; REMEDIATION_LABELS.len()],
    no_ip: metrics::Counter,
    duration: metrics::Histogram,
    captcha: Option<Arc<crate::captcha::Captcha>>,
    /// CrowdSec AppSec, asked after an allow (headers only: Caddy's forward_auth sends
    /// no body).
    appsec: Option<Arc<Appsec>>,
}

/// What [`Door::begin`] found.
pub enum Step {
    Done(Response<Full<Bytes>>),
    Captcha(Box<super::captcha::CaptchaJob>),
}

impl Door {
    /// Reads the template (if any) once.
    pub fn new(config: &Config, decider: Arc<Decider>, ready: Readiness) -> anyhow::Result<Door> {
        let template = match &config.ban_template {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("ban_template {}: cannot read it", path.display()))?,
            None => BUILTIN_TEMPLATE.to_string(),
        };
        let header = hyper::header::HeaderName::from_bytes(config.client_ip_header.as_bytes())
            .with_context(|| format!("client_ip_header {:?}", config.client_ip_header))?;
        Ok(Door {
            decider,
            ready,
            header,
            trusted: config.trusted_proxies.clone(),
            ban_status: StatusCode::from_u16(config.ban_status).unwrap_or(StatusCode::FORBIDDEN),
            template,
            request_ids: AtomicU64::new(0),
            id_seed: clock::now_ms() as u64,
            meters: REMEDIATION_LABELS.map(
                |r| metrics::counter!(names::LOOKUPS, "door" => "forward_auth", "remediation" => r),
            ),
            no_ip: metrics::counter!(names::FORWARD_AUTH_NO_CLIENT_IP),
            duration: metrics::histogram!(names::LOOKUP_DURATION, "door" => "forward_auth"),
            captcha: None,
            appsec: None,
        })
    }

    /// Answers captcha verdicts with this flow (without one: as a ban).
    pub fn with_captcha(mut self, captcha: Option<Arc<crate::captcha::Captcha>>) -> Self {
        self.captcha = captcha;
        self
    }

    /// The captcha flow's answer for `job`.
    pub async fn captcha(&self, job: super::captcha::CaptchaJob) -> Response<Full<Bytes>> {
        let started = job.started;
        let response = job
            .answer(self.captcha.as_deref(), self.decider.usage())
            .await;
        self.duration.record(started.elapsed().as_secs_f64());
        response
    }

    /// Asks `appsec` about every request the IP check allows.
    pub fn with_appsec(mut self, appsec: Option<Arc<Appsec>>) -> Door {
        self.appsec = appsec;
        self
    }

    /// Answers one request: the IP check (a captcha verdict goes to the flow), then, after
    /// an allow (or a cleared captcha) and when configured, AppSec, whose captcha verdict
    /// goes to the flow too.
    pub async fn serve<B>(&self, req: &Request<B>, peer: Option<IpAddr>) -> Response<Full<Bytes>> {
        let response = match self.begin(req, peer) {
            Step::Done(r) => r,
            Step::Captcha(job) => self.captcha(*job).await,
        };
        let Some(appsec) = &self.appsec else {
            return response;
        };
        // Protection off (bypassed): nothing is inspected either.
        if response.status() != StatusCode::OK || !self.decider.enabled() {
            return response;
        }
        let Ok(ip) = self.client_ip(req.headers(), peer) else {
            return response;
        };
        let outcome = appsec
            .inspect(
                appsec::Door::ForwardAuth,
                inspection(req, ip),
                self.decider.usage(),
            )
            .await;
        if !outcome.refuses() {
            return response;
        }
        let name = outcome.remediation().as_str();
        let refusal = self.refusal(req.headers(), ip, name, appsec::ORIGIN, outcome.as_str());
        if outcome != appsec::Outcome::Captcha {
            return refusal;
        }
        if self.captcha.is_none() {
            return refusal;
        }
        // The IP check already recorded this request's duration: the job is answered
        // without recording it again.
        super::captcha::CaptchaJob::new(
            ip,
            req.headers(),
            appsec::ORIGIN.to_string(),
            String::new(),
            refusal,
            Instant::now(),
        )
        .answer(self.captcha.as_deref(), self.decider.usage())
        .await
    }

    /// The IP check alone, answered at once: a captcha verdict gets the refusal the flow
    /// falls back to (the fuzz target drives this).
    pub fn handle<B>(&self, req: &Request<B>, peer: Option<IpAddr>) -> Response<Full<Bytes>> {
        match self.begin(req, peer) {
            Step::Done(r) => r,
            Step::Captcha(job) => job.into_refusal(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = crate::decision::normalize_ip(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address: from the header walked right to left, else the peer.
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<IpAddr, String> {
        let values: Vec<&HeaderValue> = headers.get_all(&self.header).iter().collect();
        for value in values.iter().rev() {
            let text = value
                .to_str()
                .map_err(|_| format!("{} holds bytes that are not text", self.header.as_str()))?;
            for entry in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
                let ip = parse_entry(entry).ok_or_else(|| {
                    format!(
                        "{} entry {:?} is not an IP address",
                        self.header.as_str(),
                        truncate(entry, 64)
                    )
                })?;
                if !self.is_trusted(ip) {
                    return Ok(crate::decision::normalize_ip(ip));
                }
            }
        }
        peer.map(crate::decision::normalize_ip).ok_or_else(|| {
            format!(
                "no client address: the request has no usable {} header and the peer has no IP address",
                self.header.as_str()
            )
        })
    }

    fn request_id(&self, headers: &HeaderMap) -> String {
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            if !id.is_empty() && id.len() <= 128 {
                return id.to_string();
            }
        }
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:016x}",
            self.id_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n
        )
    }

    /// Answers one forward_auth request, or hands a captcha verdict on to the flow.
    pub fn begin<B>(&self, req: &Request<B>, peer: Option<IpAddr>) -> Step {
        let started = Instant::now();
        let ip = match self.client_ip(req.headers(), peer) {
            Ok(ip) => ip,
            Err(reason) => {
                self.no_ip.increment(1);
                debug!("forward_auth: 400: {reason}");
                return Step::Done(plain(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("cerberus: {reason}\n"),
                ));
            }
        };
        let now = clock::now_secs();
        let ready = self.ready.get();
        let decider = &*self.decider;
        let verdict = decider.decide(ip, now, |source, hit| {
            let answer = super::lookup_answer(source, hit, now, ready);
            let label = super::count_lookup(decider.usage(), source, hit, answer.remediation);
            (
                answer.remediation,
                answer.expires_in_s,
                answer.origin.to_string(),
                answer.scenario.to_string(),
                source,
                label,
            )
        });
        let (remediation, expires_in_s, origin, scenario, source, label) = verdict;
        self.meters[label].increment(1);
        let response = match remediation {
            bouncer_api::Remediation::Allow => plain(StatusCode::OK, "allow", String::new()),
            bouncer_api::Remediation::Throttle => {
                let mut r = plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttle",
                    "cerberus: too many requests\n".to_string(),
                );
                let retry = expires_in_s.clamp(1, 60);
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry));
                r
            }
            other => {
                let name = if source == Source::FailClosed {
                    "ban"
                } else {
                    other.as_str()
                };
                self.refusal(req.headers(), ip, name, &origin, &scenario)
            }
        };
        if remediation == bouncer_api::Remediation::Captcha
            && source != Source::FailClosed
            && self.captcha.is_some()
        {
            return Step::Captcha(Box::new(super::captcha::CaptchaJob::new(
                ip,
                req.headers(),
                origin,
                scenario,
                response,
                started,
            )));
        }
        self.duration.record(started.elapsed().as_secs_f64());
        Step::Done(response)
    }

    /// The refusal page (JSON when only JSON is accepted), with `ban_status`.
    fn refusal(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
        name: &'static str,
        origin: &str,
        scenario: &str,
    ) -> Response<Full<Bytes>> {
        let page = Page {
            ip,
            remediation: name,
            origin,
            scenario,
            request_id: &self.request_id(headers),
        };
        if wants_only_json(headers) {
            let mut r = plain(self.ban_status, name, page.json());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        } else {
            let mut r = plain(self.ban_status, name, page.render(&self.template));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
    }
}

/// What Caddy's forward_auth tells of the original request: method and URI in
/// `X-Forwarded-Method` / `X-Forwarded-Uri`, the host in `X-Forwarded-Host` (else
/// `Host`), and the client's headers copied; no body.
fn inspection<B>(req: &Request<B>, ip: IpAddr) -> Inspection<'_> {
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let method = text("x-forwarded-method").unwrap_or(req.method().as_str());
    let uri = text("x-forwarded-uri")
        .unwrap_or_else(|| req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let host = text("x-forwarded-host")
        .or_else(|| text("host"))
        .unwrap_or("");
    let http_version = match req.version() {
        hyper::Version::HTTP_10 => "1.0",
        hyper::Version::HTTP_2 => "2",
        hyper::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let headers = h
        .iter()
        .filter(|(n, _)| *n != "x-forwarded-method" && *n != "x-forwarded-uri")
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    Inspection {
        ip,
        method,
        uri,
        host,
        http_version,
        headers,
        body: Bytes::new(),
        truncated: false,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    bouncer_api::truncate_utf8(s, max)
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, `192.0.2.1:1234`, `[2001:db8::1]:1234`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<IpAddr>().ok())
}

/// True when `Accept` is present and every media range in it is JSON.
fn wants_only_json(headers: &HeaderMap) -> bool {
    let mut any = false;
    for value in headers.get_all(ACCEPT) {
        let Ok(text) = value.to_str() else {
            return false;
        };
        for range in text.split(',') {
            let media = range.split(';').next().unwrap_or("").trim();
            if media.is_empty() {
                continue;
            }
            let media = media.to_ascii_lowercase();
            if media == "application/json"
                || (media.starts_with("application/") && media.ends_with("+json"))
            {
                any = true;
            } else {
                return false;
            }
        }
    }
    any
}

fn plain(status: StatusCode, remediation: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(REMEDIATION_HEADER, HeaderValue::from_static(remediation));
    if status != StatusCode::OK {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The values a ban page shows.
struct Page<'a> {
    ip: IpAddr,
    remediation: &'a str,
    origin: &'a str,
    scenario: &'a str,
    request_id: &'a str,
}

impl Page<'_> {
    /// Replaces `{{ip}}`, `{{remediation}}`, `{{scenario}}`, `{{origin}}` and
    /// `{{request_id}}` (spaces inside the braces allowed) with HTML-escaped values;
    /// anything else in braces is left as it is.
    fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 128);
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                out.push_str(&rest[start..]);
                return out;
            };
            let value = match after[..end].trim() {
                "ip" => Some(self.ip.to_string()),
                "remediation" => Some(self.remediation.to_string()),
                "scenario" => Some(self.scenario.to_string()),
                "origin" => Some(self.origin.to_string()),
                "request_id" => Some(self.request_id.to_string()),
                _ => None,
            };
            match value {
                Some(v) => crate::escape::html_into(&v, &mut out),
                None => out.push_str(&rest[start..start + 2 + end + 2]),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn json(&self) -> String {
        serde_json::json!({
            "remediation": self.remediation,
            "ip": self.ip.to_string(),
            "origin": non_empty(self.origin),
            "scenario": non_empty(self.scenario),
            "request_id": self.request_id,
        })
        .to_string()
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Binds the listener (a stale Unix socket file is replaced, a live one refused) and
/// serves until `shutdown`. Returns the task and the address it listens on.
pub async fn start(
    config: &Config,
    door: Door,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<(JoinHandle<()>, String)>> {
    let door = Arc::new(door);
    let handler = move |req: Request<hyper::body::Incoming>, peer: Option<IpAddr>| {
        let door = door.clone();
        async move { door.serve(&req, peer).await }
    };
    super::http::serve(
        "forward_auth",
        "forward_auth_listen",
        &config.forward_auth_listen,
        config.socket_mode,
        super::http::Limits::new(
            config,
            "forward_auth_max_connections",
            config.forward_auth_max_connections,
        ),
        handler,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_placeholders_are_escaped() {
        let page = Page {
            ip: "192.0.2.1".parse().unwrap(),
            remediation: "ban",
            origin: "cscli",
            scenario: "<script>alert('x')</script> & co",
            request_id: "r\"1",
        };
        let out = page.render(
            "<p>{{ip}} {{ remediation }} {{origin}}</p>{{scenario}}{{request_id}}{{other}}{{",
        );
        assert_eq!(
            out,
            "<p>192.0.2.1 ban cscli</p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; cor&quot;1{{other}}{{"
        );
    }

    #[test]
    fn accept_only_json() {
        let mut h = HeaderMap::new();
        assert!(!wants_only_json(&h));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_only_json(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/problem+json;q=1, application/json"),
        );
        assert!(wants_only_json(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/html"),
        );
        assert!(!wants_only_json(&h));
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_only_json(&h));
    }

    #[test]
    fn entries_with_ports_and_brackets() {
        assert_eq!(
            parse_entry("192.0.2.1:80"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_entry("[2001:db8::1]:80"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_entry("[2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_entry("unknown"), None);
    }
}
