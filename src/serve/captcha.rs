//! Captcha verdicts at the doors: what each door hands the flow of [`crate::captcha`]
//! and how its reply goes out, as a socket answer (frames 0x04/0x84) or as the HTTP
//! response of forward_auth.

use crate::captcha::{Ask, Captcha, Reply};
use crate::clock;
use crate::store::Decider;
use crate::usage::Usage;
use bouncer_api::captcha::{CaptchaAnswer, CaptchaRequest};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use std::net::IpAddr;
use std::time::Instant;

/// The answer to a captcha request of the module. The verdict is looked up again here
/// (it may have changed, and the daemon decides): allow or bypassed passes, any verdict
/// but captcha refuses, and so does a daemon without a captcha provider. A request
/// whose captcha is AppSec's (`from_appsec`) goes to the flow when the address is
/// allowed, with origin `appsec`.
pub(super) async fn socket_answer(
    decider: &Decider,
    captcha: Option<&Captcha>,
    req: &CaptchaRequest,
) -> CaptchaAnswer {
    let found = decider.answer(req.addr);
    let (origin, scenario) = match found.remediation {
        None if req.from_appsec && decider.enabled() => (crate::appsec::ORIGIN, ""),
        None => return CaptchaAnswer::Pass,
        Some(crate::decision::Remediation::Captcha) => (
            found.origin.as_deref().unwrap_or(""),
            found.scenario.as_deref().unwrap_or(""),
        ),
        Some(_) => return CaptchaAnswer::Refuse,
    };
    let Some(captcha) = captcha else {
        return CaptchaAnswer::Refuse;
    };
    let ask = Ask {
        ip: req.addr,
        method: &req.method,
        uri: &req.uri,
        https: req.https,
        cookie: (!req.cookie.is_empty()).then_some(req.cookie.as_str()),
    };
    let reply = captcha
        .answer(
            &ask,
            clock::now_secs().into(),
            decider.usage(),
            origin,
            scenario,
        )
        .await;
    if reply == Reply::Pass {
        return CaptchaAnswer::Pass;
    }
    match reply.written() {
        None => CaptchaAnswer::Refuse,
        Some(w) => CaptchaAnswer::Respond {
            status: w.status,
            headers: w
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            body: w.body.into_bytes(),
        },
    }
}

/// A forward_auth request whose verdict is captcha, with what the flow needs from it
/// (owned, so the request itself is not held while the provider is asked). The original
/// request is told by the headers Caddy's forward_auth sets: `X-Forwarded-Method`,
/// `X-Forwarded-Uri`, `X-Forwarded-Proto`, and the client's own `Cookie`.
pub struct CaptchaJob {
    ip: IpAddr,
    method: String,
    uri: String,
    https: bool,
    cookie: Option<String>,
    origin: String,
    scenario: String,
    /// The answer when the flow refuses (the ban page).
    refusal: Response<Full<Bytes>>,
    pub(super) started: Instant,
}

impl CaptchaJob {
    /// The refusal the flow falls back to, for a caller that runs no flow.
    pub fn into_refusal(self) -> Response<Full<Bytes>> {
        self.refusal
    }

    pub(super) fn new(
        ip: IpAddr,
        h: &HeaderMap,
        origin: String,
        scenario: String,
        refusal: Response<Full<Bytes>>,
        started: Instant,
    ) -> CaptchaJob {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        CaptchaJob {
            ip,
            method: text("x-forwarded-method").unwrap_or("GET").to_string(),
            uri: text("x-forwarded-uri").unwrap_or("/").to_string(),
            https: text("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https")),
            cookie: h
                .get_all(hyper::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(crate::captcha::cookie::from_header)
                .map(str::to_string),
            origin,
            scenario,
            refusal,
            started,
        }
    }

    /// The HTTP answer: 200 (empty) for a pass, the flow's page or 303, else the refusal.
    pub(super) async fn answer(
        self,
        captcha: Option<&Captcha>,
        usage: &Usage,
    ) -> Response<Full<Bytes>> {
        let Some(captcha) = captcha else {
            return self.refusal;
        };
        let ask = Ask {
            ip: self.ip,
            method: &self.method,
            uri: &self.uri,
            https: self.https,
            cookie: self.cookie.as_deref(),
        };
        let now = clock::now_secs().into();
        let reply = captcha
            .answer(&ask, now, usage, &self.origin, &self.scenario)
            .await;
        if reply == Reply::Pass {
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut().insert(
                super::forward_auth::REMEDIATION_HEADER,
                HeaderValue::from_static("allow"),
            );
            return r;
        }
        let Some(w) = reply.written() else {
            return self.refusal;
        };
        let mut r = Response::new(Full::new(Bytes::from(w.body)));
        *r.status_mut() = StatusCode::from_u16(w.status).unwrap_or(StatusCode::FORBIDDEN);
        for (name, value) in w.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().append(name, v);
            }
        }
        r
    }
}
