//! Console enrollment: "Enrollment key" (a password field, never shown back), "Instance
//! name" (default: the host name), "Tags", "Enroll"; the state with its message and fix;
//! the last heartbeat and "Send heartbeat now". Calls [`crate::admin::console`].

use super::html::{csrf_field, esc, frame, text};
use super::{done, error_text, json_of, page_reply, Ctx, Reply, Web};
use crate::admin::console as api;
use hyper::StatusCode;
use serde_json::json;
use std::collections::HashMap;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The fix of a failure code, in the operator's words.
fn fix(code: &str) -> &'static str {
    match code {
        "expired_key" | "invalid_key" => "Copy a fresh key from app.crowdsec.net → Security Engines → Enroll (keys expire), then enroll again.",
        "already_enrolled" => "This engine is enrolled already: tick \"Overwrite the existing enrollment\" to enroll it again.",
        "unreachable" => "The central API cannot be reached: open outbound TCP to the host and port shown below, then retry.",
        "unauthorized" => "The central API refused the engine's credentials: check online_api_credentials.yaml of the engine.",
        "busy" => "An enrollment is already running: wait for it to finish.",
        "server_error" => "The central API failed (5xx): retry in a few minutes.",
        "engine_config" => "cerberus cannot read the engine's config: check console_engine_config and the file it names.",
        _ => "",
    }
}

fn shown(ctx: &Ctx, body: &str) -> Reply {
    page_reply(
        StatusCode::OK,
        frame(
            "Console enrollment",
            "/console",
            &ctx.csrf,
            ctx.flash.as_ref(),
            body,
        ),
    )
}

pub async fn page(web: &Web, ctx: &Ctx) -> Reply {
    let (status, s) = json_of(api::status(&web.admin)).await;
    if !status.is_success() {
        let body = format!(
            r#"<section class="card"><p role="status">{}</p></section>"#,
            esc(&error_text(&s))
        );
        return shown(ctx, &body);
    }
    let state = text(&s["state"]);
    let code = text(&s["code"]);
    let reason = s["reason"].as_str().map_or(String::new(), |r| {
        format!(r#"<dt>Message</dt><dd>{}</dd>"#, esc(r))
    });
    let hint = fix(&code);
    let hint = if hint.is_empty() || state == "enrolled" {
        String::new()
    } else {
        format!(r#"<dt>Fix</dt><dd>{}</dd>"#, esc(hint))
    };
    let capi = match (
        s["central_api"]["url"].as_str(),
        s["central_api"]["error"].as_str(),
    ) {
        (Some(u), _) => esc(u),
        (None, Some(e)) => esc(e),
        _ => "–".into(),
    };
    let last = &s["heartbeat"]["last"];
    let heartbeat = if last.is_null() {
        "none yet".to_string()
    } else {
        let ok = last["ok"].as_bool().unwrap_or(false);
        format!(
            "{} at {}{}",
            if ok { "ok" } else { "failed" },
            esc(&text(&last["at"])),
            last["error"]
                .as_str()
                .map_or(String::new(), |e| format!(": {}", esc(e)))
        )
    };
    let name = s["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(hostname);
    let tags = s["tags"]
        .as_array()
        .map(|t| t.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let body = format!(
        r#"<section class="card"><h2>State</h2>
<dl class="facts"><dt>State</dt><dd id="console-state">{state}</dd>{reason}{hint}<dt>Central API</dt><dd>{capi}</dd><dt>Last heartbeat</dt><dd id="heartbeat">{heartbeat}</dd></dl>
<form method="post" action="/console/heartbeat">{csrf}<button type="submit">Send heartbeat now</button></form></section>
<section class="card"><h2>Enroll</h2>
<form method="post" action="/console/enroll" class="grid" autocomplete="off">{csrf}
<label for="enroll-key">Enrollment key</label><input id="enroll-key" name="enrollment_key" type="password" required autocomplete="off">
<label for="enroll-name">Instance name</label><input id="enroll-name" name="name" value="{name}">
<label for="enroll-tags">Tags</label><input id="enroll-tags" name="tags" value="{tags}" aria-describedby="tags-hint"><span id="tags-hint" class="hint">comma-separated</span>
<label class="check"><input type="checkbox" name="overwrite" value="true"> Overwrite the existing enrollment</label>
<button type="submit">Enroll</button>
</form></section>"#,
        state = esc(&state),
        csrf = csrf_field(&ctx.csrf),
        name = esc(&name),
        tags = esc(&tags),
    );
    shown(ctx, &body)
}

pub async fn enroll(web: &Web, ctx: &Ctx, form: &HashMap<String, String>) -> Reply {
    let field = |k: &str| {
        form.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut body = json!({
        "enrollment_key": field("enrollment_key").unwrap_or_default(),
        "overwrite": form.get("overwrite").is_some_and(|v| v == "true"),
    });
    if let Some(n) = field("name") {
        body["name"] = json!(n);
    }
    if let Some(t) = field("tags") {
        let tags: Vec<&str> = t
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        body["tags"] = json!(tags);
    }
    let (status, answer) = json_of(api::enroll_body(&web.admin, &body).await).await;
    if status.is_success() {
        let next = answer["next"].as_str().unwrap_or("");
        return done(
            web,
            ctx,
            "/console",
            true,
            format!("Enrolled. Next: {next}."),
        );
    }
    let code = answer["code"].as_str().unwrap_or("");
    let f = fix(code);
    done(
        web,
        ctx,
        "/console",
        false,
        format!(
            "Not enrolled: {}{}{}",
            error_text(&answer),
            if f.is_empty() { "" } else { " " },
            f
        ),
    )
}

pub async fn heartbeat(web: &Web, ctx: &Ctx) -> Reply {
    let (status, answer) = json_of(api::heartbeat(&web.admin).await).await;
    if !status.is_success() {
        return done(web, ctx, "/console", false, error_text(&answer));
    }
    let ok = answer["ok"].as_bool().unwrap_or(false);
    let msg = if ok {
        format!("Heartbeat sent ({} ms).", text(&answer["latency_ms"]))
    } else {
        format!("Heartbeat failed: {}", text(&answer["error"]))
    };
    done(web, ctx, "/console", ok, msg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_failure_the_page_can_meet_has_a_fix() {
        for code in [
            "expired_key",
            "invalid_key",
            "already_enrolled",
            "unreachable",
            "unauthorized",
            "busy",
            "server_error",
            "engine_config",
        ] {
            assert!(!super::fix(code).is_empty(), "{code}");
        }
        assert!(super::fix("expired_key").contains("fresh key"));
        assert!(super::fix("already_enrolled").contains("Overwrite"));
    }
}
