//! The web console on the admin listener at `/`: server-rendered pages (plain Rust
//! templates in each page's module, every value escaped by [`html::esc`]), a little
//! vanilla JavaScript of our own (`static/app.js`: countdowns, polling a fragment, copy
//! to clipboard), no inline script or style, nothing loaded from elsewhere.
//!
//! Pages call the functions the admin API calls ([`crate::admin`]'s handlers), never the
//! API over HTTP. Requests under the API prefix, `/healthz`, `/readyz` and `/metrics` go
//! to [`crate::admin::handle`] untouched.
//!
//! Every console request passes [`security::foreign`] (Host/Origin), then needs a session
//! (else: sign-in); every POST needs the session's CSRF token.

mod countries;
mod decisions;
mod diagnostics;
mod enroll;
pub mod history;
pub mod html;
mod hub;
mod overview;
pub mod security;
mod signin;

use crate::admin::{self, Admin};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

type Reply = Response<Full<Bytes>>;

/// The console's state beside the admin API's.
pub struct Web {
    pub admin: Arc<Admin>,
    sessions: security::Sessions,
    /// The listener's TCP port once bound (the Host check); unset on a Unix socket.
    port: OnceLock<u16>,
    /// Failed sign-ins wait their delay one after the other.
    signin_gate: tokio::sync::Mutex<()>,
    pub history: Arc<history::History>,
}

impl Web {
    pub fn new(admin: Arc<Admin>) -> Web {
        Web {
            admin,
            sessions: security::Sessions::default(),
            port: OnceLock::new(),
            signin_gate: tokio::sync::Mutex::new(()),
            history: Arc::new(history::History::default()),
        }
    }
}

/// Starts the admin listener with the console: the admin API as before, pages at `/`.
/// `None` when `admin_listen` is off.
pub async fn start(
    admin: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<(JoinHandle<()>, String)>> {
    let listen = admin.config.admin_listen.clone();
    let mode = admin.config.socket_mode;
    let limits = crate::serve::http::Limits::new(
        &admin.config,
        "admin_max_connections",
        admin.config.admin_max_connections,
    );
    let web = Arc::new(Web::new(admin));
    let w = web.clone();
    let handler = move |req: Request<hyper::body::Incoming>, _peer: Option<IpAddr>| {
        let web = w.clone();
        async move { handle(&web, req).await }
    };
    let started = crate::serve::http::serve(
        "admin",
        "admin_listen",
        &listen,
        mode,
        limits,
        handler,
        shutdown.clone(),
    )
    .await?;
    if let Some((_, addr)) = &started {
        if let Some(port) = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .filter(|_| !addr.starts_with("unix:"))
        {
            let _ = web.port.set(port);
        }
        tokio::spawn(history::sample(
            web.history.clone(),
            web.admin.decider.clone(),
            shutdown,
        ));
    }
    Ok(started)
}

fn is_api(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path == admin::PREFIX
        || path.starts_with(&format!("{}/", admin::PREFIX))
}

async fn handle(web: &Web, req: Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    if is_api(&path) {
        return admin::handle(&web.admin, req).await;
    }
    let mut reply = console(web, req, &path).await;
    security::harden(reply.headers_mut());
    reply
}

/// What a signed-in request knows.
pub struct Ctx {
    pub session: String,
    pub csrf: String,
    pub flash: Option<html::Flash>,
}

async fn console(web: &Web, req: Request<hyper::body::Incoming>, path: &str) -> Reply {
    if let Some(why) = security::foreign(req.headers(), web.port.get().copied()) {
        warn!("web console: refused {} {path}: {why}", req.method());
        return page_reply(
            StatusCode::FORBIDDEN,
            html::bare("Refused", &format!("<p>{}</p>", html::esc(&why))),
        );
    }
    let method = req.method().clone();
    match (method.as_str(), path) {
        ("GET", "/static/app.js") => return asset("text/javascript", APP_JS),
        ("GET", "/static/app.css") => return asset("text/css", APP_CSS),
        ("GET", "/signin") => return signin::page(web, None, StatusCode::OK),
        ("POST", "/signin") => return signin::submit(web, req).await,
        _ => {}
    }
    let ctx = security::cookie(req.headers(), security::COOKIE)
        .and_then(|id| web.sessions.touch(id).map(|s| (id.to_string(), s)))
        .map(|(session, s)| Ctx {
            session,
            csrf: s.csrf,
            flash: s.flash,
        });
    let Some(ctx) = ctx else {
        return see_other("/signin");
    };
    if method == Method::POST {
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let given = form.get("csrf").map(String::as_str).unwrap_or("");
        if given.is_empty() || given != ctx.csrf {
            warn!("web console: refused POST {path}: missing or wrong CSRF token");
            return page_reply(
                StatusCode::FORBIDDEN,
                html::bare(
                    "Refused",
                    "<p>This change came without the page's CSRF token and was not made. Reload the page and try again.</p>",
                ),
            );
        }
        return match path {
            "/signout" => signin::signout(web, &ctx),
            "/protection" => overview::toggle(web, &ctx, &form),
            "/decisions/ban" => decisions::ban(web, &ctx, &form).await,
            "/decisions/unban" => decisions::unban(web, &ctx, &form).await,
            "/hub/change" => hub::change(web, &ctx, &form).await,
            "/console/enroll" => enroll::enroll(web, &ctx, &form).await,
            "/console/heartbeat" => enroll::heartbeat(web, &ctx).await,
            _ => not_found(path),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return page_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            html::bare("Not allowed", "<p>The console takes GET and POST only.</p>"),
        );
    }
    let query = req.uri().query().unwrap_or("").to_string();
    match path {
        "/" => overview::page(web, &ctx).await,
        "/overview/state" => overview::state_fragment(web).await,
        "/decisions" => decisions::page(web, &ctx, &query).await,
        "/decisions/rows" => decisions::rows_fragment(web, &query).await,
        "/decisions/confirm" => decisions::confirm(web, &ctx, &query),
        "/hub" => hub::page(web, &ctx, &query).await,
        "/console" => enroll::page(web, &ctx).await,
        "/diagnostics" => diagnostics::page(web, &ctx).await,
        _ => not_found(path),
    }
}

const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");

fn asset(kind: &'static str, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r
}

pub(crate) fn page_reply(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

pub(crate) fn see_other(to: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        LOCATION,
        HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
    );
    r
}

/// Back to `to` with a message for the next page.
pub(crate) fn done(web: &Web, ctx: &Ctx, to: &str, ok: bool, text: impl Into<String>) -> Reply {
    web.sessions.flash(&ctx.session, ok, text);
    see_other(to)
}

fn with_cookie(mut r: Reply, cookie: HeaderValue) -> Reply {
    r.headers_mut().insert(SET_COOKIE, cookie);
    r
}

fn not_found(path: &str) -> Reply {
    page_reply(
        StatusCode::NOT_FOUND,
        html::bare(
            "Not found",
            &format!(
                r#"<p>There is no page {}. <a href="/">Back to the overview</a>.</p>"#,
                html::esc(path)
            ),
        ),
    )
}

/// A form body (`application/x-www-form-urlencoded`, at most [`admin::MAX_BODY`]).
/// A repeated key keeps every value, joined by `\n` (the selection of rows).
async fn read_form(req: Request<hyper::body::Incoming>) -> Result<HashMap<String, String>, Reply> {
    let body = match Limited::new(req.into_body(), admin::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(page_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                html::bare("Refused", "<p>The form is too large.</p>"),
            ))
        }
    };
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        form.entry(k.into_owned())
            .and_modify(|e| {
                e.push('\n');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    Ok(form)
}

/// The status and JSON body of an admin handler's answer.
pub(crate) async fn json_of(r: admin::Reply) -> (StatusCode, Value) {
    let status = r.status();
    let bytes = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The `error` of an admin answer, with its fix when it names one.
pub(crate) fn error_text(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .unwrap_or("the request failed")
        .to_string()
}
