//! Sign-in with the admin token and sign-out. A wrong token is counted with the admin
//! API's auth failures (`cerberus_admin_auth_failures_total`) and answered only after
//! [`FAILED_DELAY`], one failure after the other, so guessing is slow. The token is read
//! from the form and compared; it never goes into a page, a URL or a log line.

use super::html::{bare, esc};
use super::{page_reply, read_form, security, see_other, with_cookie, Ctx, Reply, Web};
use hyper::{Request, StatusCode};
use std::time::Duration;
use tracing::{info, warn};

/// How long a failed sign-in waits before its answer.
pub const FAILED_DELAY: Duration = Duration::from_secs(1);

/// Where the operator finds the token, said on the sign-in page.
fn token_source(web: &Web) -> String {
    let c = &web.admin.config;
    if c.admin_token.is_some() {
        "It is the <code>admin_token</code> of cerberus's config (or the content of the file named by <code>admin_token_file</code>).".into()
    } else {
        format!(
            "cerberus generated it on first start: it is in <code>{}</code> (readable by cerberus's user only), e.g. <code>sudo cat {}</code>.",
            esc(&c.data_dir.join("admin_token").display().to_string()),
            esc(&c.data_dir.join("admin_token").display().to_string())
        )
    }
}

pub fn page(web: &Web, error: Option<&str>, status: StatusCode) -> Reply {
    let error = error.map_or(String::new(), |e| {
        format!(
            r#"<p class="flash error" role="alert" id="signin-error">{}</p>"#,
            esc(e)
        )
    });
    let body = format!(
        r#"{error}
<form method="post" action="/signin" class="card">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
<p class="hint">Sign in with the admin API token. {}</p>"#,
        token_source(web)
    );
    page_reply(status, bare("Sign in to cerberus", &body))
}

pub async fn submit(web: &Web, req: Request<hyper::body::Incoming>) -> Reply {
    let secure = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let given = form.get("token").map(String::as_str).unwrap_or("");
    if given.trim().is_empty() {
        return page(web, Some("Enter the admin token."), StatusCode::BAD_REQUEST);
    }
    if !web.admin.token_matches(given) {
        let _one_at_a_time = web.signin_gate.lock().await;
        tokio::time::sleep(FAILED_DELAY).await;
        warn!("web console: a sign-in with a wrong admin token was refused");
        return page(
            web,
            Some("Wrong admin token: nothing was opened. Check the token and try again."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let (id, _csrf) = web.sessions.create();
    info!("web console: signed in");
    with_cookie(see_other("/"), security::set_cookie(Some(&id), secure))
}

pub fn signout(web: &Web, ctx: &Ctx) -> Reply {
    web.sessions.remove(&ctx.session);
    info!("web console: signed out");
    with_cookie(see_other("/signin"), security::set_cookie(None, false))
}
