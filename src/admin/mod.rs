//! The admin HTTP API under [`PREFIX`]: live decisions, unban and ban, the protection
//! switch, status and diagnostics, each behind `Authorization: Bearer TOKEN`; and, without
//! a token, `/healthz`, `/readyz` and `/metrics` (Prometheus text).
//!
//! The token is `admin_token` (or `admin_token_file`) from the config, else one generated
//! on first start into `data_dir/admin_token` (mode 0600; see [`token`]). The config refuses a
//! non-loopback `admin_listen` without a token of the operator's own. A token in the query
//! string is refused (it would end up in access logs). Bodies are capped at
//! [`MAX_BODY`]; every bad input gets a 400 with a JSON error naming the field.
//!
//! The routes are listed once in [`ROUTES`]; the OpenAPI document (`docs/admin-api.yaml`)
//! is checked against them and against the running server by a test.

mod capi;
// The web console (`crate::web`) calls these same functions.
pub(crate) mod console;
pub(crate) mod decisions;
pub(crate) mod diagnostics;
pub(crate) mod hub;
mod token;

use crate::config::Config;
use crate::control::Control;
use crate::engine::hub::Hub;
use crate::engine::managed::EngineControl;
use crate::lapi::sync::SyncStats;
use crate::lapi::watcher::Watcher;
use crate::lapi::{LapiClient, Upstream};
use crate::persist::Persister;
use crate::serve::Readiness;
use crate::store::Decider;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the authenticated routes live.
pub const PREFIX: &str = "/api/v1/cerberus/crowdsec";

/// The largest request body accepted (413 above).
pub const MAX_BODY: usize = 64 * 1024;

/// Every route: method, path (after [`PREFIX`] when `auth`; `{id}` is a path parameter),
/// whether it needs the token.
pub const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/healthz", false),
    ("GET", "/readyz", false),
    ("GET", "/metrics", false),
    ("GET", "/status", true),
    ("POST", "/enable", true),
    ("POST", "/disable", true),
    ("GET", "/decisions", true),
    ("DELETE", "/decisions/{id}", true),
    ("POST", "/unban", true),
    ("POST", "/ban", true),
    ("GET", "/diagnostics/connectivity", true),
    ("GET", "/diagnostics/config", true),
    ("GET", "/hub/presets", true),
    ("POST", "/hub/presets/install", true),
    ("POST", "/hub/presets/remove", true),
    ("POST", "/console/enroll", true),
    ("GET", "/console/status", true),
    ("POST", "/console/heartbeat", true),
    ("POST", "/capi/register", true),
];

/// What the handlers share.
pub struct Admin {
    pub config: Arc<Config>,
    pub decider: Arc<Decider>,
    pub stats: Arc<SyncStats>,
    pub control: Control,
    pub persist: Arc<Persister>,
    pub ready: Readiness,
    /// The LAPI client (health probes) and watcher (writes) of the moment.
    pub upstream: watch::Receiver<Upstream>,
    /// The managed engine (engine mode).
    pub engine: Option<Arc<EngineControl>>,
    /// Hub presets for the engine's config (when an engine config is known).
    pub hub: Option<Hub>,
    /// For probes that are not LAPI (the central API).
    pub http: reqwest::Client,
    /// Where the doors listen, for `/status` and the diagnostics.
    pub socket_addr: Option<String>,
    /// CrowdSec AppSec, when `appsec_url` is set: probed by the status and diagnostics.
    pub appsec: Option<Arc<crate::appsec::Appsec>>,
    pub started: Instant,
    /// Console enrollment and heartbeats; `None` without an engine config.
    pub console: Option<Arc<crate::console::Console>>,
    /// `geoip_database`, when set: the country of every listed decision.
    pub geoip: Option<Arc<crate::geoip::GeoIp>>,
    /// The captcha flow, when a provider is configured (its reachability is shown).
    pub captcha: Option<Arc<crate::captcha::Captcha>>,
    token: String,
    countries: decisions::Countries,
}

impl Admin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        decider: Arc<Decider>,
        stats: Arc<SyncStats>,
        control: Control,
        persist: Arc<Persister>,
        ready: Readiness,
        token: String,
        upstream: watch::Receiver<Upstream>,
    ) -> anyhow::Result<Admin> {
        let http = reqwest::Client::builder()
            .user_agent(crate::lapi::USER_AGENT)
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Admin {
            config,
            decider,
            stats,
            control,
            persist,
            ready,
            upstream,
            engine: None,
            hub: None,
            http,
            socket_addr: None,
            appsec: None,
            started: Instant::now(),
            console: None,
            geoip: None,
            captcha: None,
            token,
            countries: decisions::Countries::default(),
        })
    }

    pub fn mode(&self) -> &'static str {
        self.config.mode()
    }

    /// The LAPI client of the moment (none in standalone mode, or while the engine is off).
    pub fn lapi(&self) -> Option<LapiClient> {
        self.upstream.borrow().client.clone()
    }

    /// Whether `given` is the admin token (compared in constant time; a wrong one is
    /// counted in `cerberus_admin_auth_failures_total`). For the web console's sign-in.
    pub fn token_matches(&self, given: &str) -> bool {
        let ok = !self.token.is_empty() && same(given.trim().as_bytes(), self.token.as_bytes());
        if !ok {
            metrics::counter!(crate::metrics::ADMIN_AUTH_FAILURES).increment(1);
        }
        ok
    }

    /// The LAPI watcher of the moment (none without machine credentials).
    pub fn watcher(&self) -> Option<Arc<Watcher>> {
        self.upstream.borrow().watcher.clone()
    }
}

pub use token::{token, FAILURE_DELAY};

// The listener itself is started by `crate::web::start`, which hands the API's routes
// to [`handle`].

/// An answer being built: status and JSON (or text) body.
pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer: `{"error": message}` plus `"field"` when one input is to blame.
pub(crate) fn error(status: StatusCode, message: impl Into<String>, field: Option<&str>) -> Reply {
    let mut body = json!({ "error": message.into() });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    json_reply(status, &body)
}

/// A refused request, turned into its JSON answer at the edge.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    challenge: bool,
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        let mut r = error(e.status, e.message, e.field.as_deref());
        if e.challenge {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cerberus\""),
            );
        }
        r
    }
}

/// A 400 naming the field.
pub(crate) fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
        field: Some(field.into()),
        challenge: false,
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

async fn authorized(admin: &Admin, req: &Request<hyper::body::Incoming>) -> Result<(), ApiError> {
    let unauthorized = |msg: &str| ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: msg.into(),
        field: None,
        challenge: true,
    };
    if let Some(q) = req.uri().query() {
        let in_query = q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            matches!(
                key.to_ascii_lowercase().as_str(),
                "token" | "access_token" | "admin_token" | "bearer" | "auth" | "authorization"
            )
        }) || (!admin.token.is_empty() && q.contains(&admin.token));
        if in_query {
            return Err(unauthorized(
                "a token in the query string is refused (URLs end up in logs): send it as `Authorization: Bearer <token>`",
            ));
        }
    }
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Err(unauthorized(
            "missing `Authorization: Bearer <token>` (the token is admin_token, or the file data_dir/admin_token)",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(t) if same(t.as_bytes(), admin.token.as_bytes()) => Ok(()),
        Some(_) => {
            metrics::counter!(crate::metrics::ADMIN_AUTH_FAILURES).increment(1);
            token::after_failure().await;
            Err(unauthorized("wrong admin token"))
        }
        None => Err(unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// How long a request body may take to arrive.
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a JSON object body of at most [`MAX_BODY`] bytes.
pub(crate) async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, ApiError> {
    let too_big = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the body is over {MAX_BODY} bytes"),
        field: None,
        challenge: false,
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return Err(too_big());
        }
    }
    // A body that stalls would hold a connection (and a slot of admin_max_connections).
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(collected) = tokio::time::timeout(BODY_WAIT, collect).await else {
        return Err(ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the body did not arrive within {} s", BODY_WAIT.as_secs()),
            field: Some("body".into()),
            challenge: false,
        });
    };
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
        Err(e) => return Err(bad("body", format!("cannot read the body: {e}"))),
    };
    if body.is_empty() {
        return Err(bad("body", "expected a JSON object, got an empty body"));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad("body", "expected a JSON object")),
        Err(e) => Err(bad("body", format!("not valid JSON: {e}"))),
    }
}

/// Takes the string field `key` out of `body` (`None` when absent or null).
pub(crate) fn string_field(body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(key, format!("`{key}` must be a string"))),
    }
}

/// Refuses fields that the route does not know (nothing is silently ignored).
pub(crate) fn only_fields(body: &Value, known: &[&str]) -> Result<(), ApiError> {
    if let Value::Object(map) = body {
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!("unknown field `{k}` (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Answers one request to the admin listener's API routes.
pub async fn handle(admin: &Admin, req: Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let reply = route(admin, req, &method, &path).await;
    if reply.status().is_server_error() {
        warn!("admin {method} {path}: {}", reply.status());
    }
    reply
}

async fn route(
    admin: &Admin,
    req: Request<hyper::body::Incoming>,
    method: &Method,
    path: &str,
) -> Reply {
    match path {
        "/healthz" => {
            return only(method, "GET", || {
                json_reply(StatusCode::OK, &json!({"status": "ok"}))
            })
        }
        "/readyz" => return only(method, "GET", || readyz(admin)),
        "/metrics" => return only(method, "GET", || metrics_text(admin)),
        _ => {}
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such route {path} (the admin API is under {PREFIX})"),
            None,
        );
    };
    // Unknown routes answer 404 whatever the token, so nothing is learned without one.
    let known = ROUTES
        .iter()
        .any(|&(_, p, auth)| auth && matches_route(p, rest));
    if !known {
        return error(StatusCode::NOT_FOUND, format!("no such route {path}"), None);
    }
    if let Err(e) = authorized(admin, &req).await {
        return e.into();
    }
    match (method.as_str(), rest) {
        ("GET", "/status") => diagnostics::status(admin).await,
        ("POST", "/enable") => toggle(admin, true),
        ("POST", "/disable") => toggle(admin, false),
        ("GET", "/decisions") => decisions::list(admin, req.uri().query()).await,
        ("DELETE", p) if p.starts_with("/decisions/") => {
            decisions::delete(admin, &p["/decisions/".len()..]).await
        }
        ("POST", "/unban") => match read_json(req).await {
            Ok(body) => decisions::unban(admin, &body).await,
            Err(e) => e.into(),
        },
        ("POST", "/ban") => match read_json(req).await {
            Ok(body) => decisions::ban(admin, &body).await,
            Err(e) => e.into(),
        },
        ("GET", "/diagnostics/connectivity") => diagnostics::connectivity(admin).await,
        ("GET", "/diagnostics/config") => diagnostics::config(admin).await,
        ("GET", "/hub/presets") => hub::list(admin, req.uri().query()).await,
        ("POST", "/hub/presets/install") => match read_json(req).await {
            Ok(body) => hub::change(admin, &body, true).await,
            Err(e) => e.into(),
        },
        ("POST", "/hub/presets/remove") => match read_json(req).await {
            Ok(body) => hub::change(admin, &body, false).await,
            Err(e) => e.into(),
        },
        ("POST", "/console/enroll") => console::enroll(admin, req).await,
        ("GET", "/console/status") => console::status(admin),
        ("POST", "/console/heartbeat") => console::heartbeat(admin).await,
        ("POST", "/capi/register") => capi::register(admin).await,
        _ => {
            let allowed: Vec<&str> = ROUTES
                .iter()
                .filter(|&&(_, p, _)| matches_route(p, rest))
                .map(|&(m, _, _)| m)
                .collect();
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not allowed on {path} (allowed: {})",
                    allowed.join(", ")
                ),
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
    }
}

/// Whether `path` matches the route pattern `pattern` (`{x}` matches one segment).
fn matches_route(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && !b.is_empty() => continue,
            (Some(a), Some(b)) if a == b => continue,
            _ => return false,
        }
    }
}

fn only(method: &Method, allowed: &str, f: impl FnOnce() -> Reply) -> Reply {
    if method.as_str() == allowed || (allowed == "GET" && method == Method::HEAD) {
        f()
    } else {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("only {allowed} is allowed here"),
            None,
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_str(allowed).expect("method name"));
        r
    }
}

fn readyz(admin: &Admin) -> Reply {
    if admin.ready.get() {
        json_reply(StatusCode::OK, &json!({"ready": true}))
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "reason": "no decision set yet: waiting for the first LAPI sync"}),
        )
    }
}

fn metrics_text(admin: &Admin) -> Reply {
    crate::metrics::observe(&admin.decider, &admin.stats);
    match crate::metrics::render() {
        Some(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the Prometheus exporter is not installed in this process",
            None,
        ),
    }
}

pub(crate) fn toggle(admin: &Admin, on: bool) -> Reply {
    let was = admin.decider.enabled();
    admin.decider.set_enabled(on);
    admin
        .persist
        .set_setting("enabled", if on { "true" } else { "false" });
    if let Some(engine) = &admin.engine {
        engine.set(on);
    }
    if was != on {
        if on {
            info!("protection switched on through the admin API");
        } else {
            warn!("protection switched off through the admin API: every request is allowed");
        }
    }
    json_reply(
        StatusCode::OK,
        &json!({"enabled": on, "changed": was != on}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
        assert!(!same(b"a", b""));
        assert!(same(b"", b""));
    }

    #[test]
    fn route_patterns() {
        assert!(matches_route("/decisions/{id}", "/decisions/12"));
        assert!(!matches_route("/decisions/{id}", "/decisions/"));
        assert!(!matches_route("/decisions/{id}", "/decisions/1/x"));
        assert!(matches_route("/status", "/status"));
        assert!(!matches_route("/status", "/status/"));
    }
}
