//! Hub presets: search over name and description, browse by type, badges (installed,
//! update available, locally modified), Install / Upgrade / Remove with the whole result
//! (what was written, data files missing, the engine's complaint on a rollback). Without
//! a managed engine the page says what to configure.

use super::html::{csrf_field, esc, frame, text};
use super::{error_text, json_of, page_reply, Ctx, Reply, Web};
use crate::admin::hub as api;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;

/// Items shown at most on one page (a search narrows it).
const SHOWN: usize = 200;
/// The item types, in the order the engine's hub lists them.
const TYPES: &[&str] = crate::engine::hub::TYPE_ORDER;
/// The seed's popular presets, one click away.
const POPULAR: &[(&str, &str)] = &[
    ("HTTP probing", "http-probing"),
    ("Bad user agents", "bad-user-agent"),
    ("CVE exploits", "http-cve"),
    ("Caddy logs", "caddy"),
];

fn search_form(q: &str, kind: &str) -> String {
    let mut types = String::from(r#"<option value="">all types</option>"#);
    for t in TYPES {
        let sel = if *t == kind { " selected" } else { "" };
        let _ = write!(types, r#"<option{sel}>{t}</option>"#);
    }
    let mut popular = String::new();
    for (label, q) in POPULAR {
        let _ = write!(popular, r#" <a href="/hub?q={q}">{label}</a>"#);
    }
    format!(
        r#"<form method="get" action="/hub" role="search" class="filters" aria-label="Search presets">
<label for="hub-q">Search</label><input id="hub-q" name="q" type="search" value="{}" placeholder="name or a word of the description">
<label for="hub-type">Type</label><select id="hub-type" name="type">{types}</select>
<button type="submit">Search</button></form>
<p class="hint">Popular:{popular}</p>"#,
        esc(q)
    )
}

fn action(csrf: &str, p: &Value, act: &str, label: &str) -> String {
    let name = text(&p["name"]);
    format!(
        r#"<form method="post" action="/hub/change">{}<input type="hidden" name="name" value="{n}"><input type="hidden" name="type" value="{t}"><input type="hidden" name="action" value="{act}"><button type="submit" aria-label="{label} {n}">{label}</button></form>"#,
        csrf_field(csrf),
        n = esc(&name),
        t = esc(&text(&p["type"])),
    )
}

fn item(csrf: &str, p: &Value) -> String {
    let installed = p["installed"].as_bool().unwrap_or(false);
    let mut badges = String::new();
    if installed {
        badges.push_str(r#"<span class="badge ok">installed</span>"#);
        if !p["up_to_date"].as_bool().unwrap_or(true) && !p["tainted"].as_bool().unwrap_or(false) {
            badges.push_str(r#"<span class="badge warn">update available</span>"#);
        }
    }
    if p["tainted"].as_bool().unwrap_or(false) {
        badges.push_str(r#"<span class="badge warn">locally modified</span>"#);
    }
    if p["deprecated"].as_bool().unwrap_or(false) {
        badges.push_str(r#"<span class="badge">deprecated</span>"#);
    }
    let actions = if installed {
        let mut a = String::new();
        if !p["up_to_date"].as_bool().unwrap_or(true) {
            a.push_str(&action(csrf, p, "install", "Upgrade"));
        }
        a.push_str(&action(csrf, p, "remove", "Remove"));
        a
    } else {
        action(csrf, p, "install", "Install")
    };
    format!(
        r#"<li class="preset"><div><strong>{}</strong> <span class="kind">{}</span> <span class="version">v{}</span> {badges}<p>{}</p></div><div class="actions">{actions}</div></li>"#,
        esc(&text(&p["name"])),
        esc(&text(&p["type"])),
        esc(&text(&p["version"])),
        esc(&text(&p["description"])),
    )
}

pub async fn page(web: &Web, ctx: &Ctx, query: &str) -> Reply {
    let (mut q, mut kind) = (String::new(), String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "q" => q = v.trim().to_string(),
            "type" => kind = v.trim().to_string(),
            _ => {}
        }
    }
    let api_q = {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !q.is_empty() {
            s.append_pair("q", &q);
        }
        if !kind.is_empty() {
            s.append_pair("type", &kind);
        }
        s.finish()
    };
    let (status, body) = json_of(api::list(&web.admin, Some(&api_q)).await).await;
    let content = if status == StatusCode::CONFLICT {
        format!(
            r#"<section class="card"><p role="status">{}</p><p>Then restart cerberus; this page lists the hub's presets and installs them into the engine.</p></section>"#,
            esc(&error_text(&body))
        )
    } else if !status.is_success() {
        format!(
            r#"{}<p class="flash error" role="alert">{}</p>"#,
            search_form(&q, &kind),
            esc(&error_text(&body))
        )
    } else {
        let presets = body["presets"].as_array().cloned().unwrap_or_default();
        let mut items = String::new();
        for p in presets.iter().take(SHOWN) {
            items.push_str(&item(&ctx.csrf, p));
        }
        let warning = body["index"]["warning"]
            .as_str()
            .map_or(String::new(), |w| {
                format!(r#"<p class="flash error" role="alert">{}</p>"#, esc(w))
            });
        format!(
            r#"<section class="card">{}{warning}<p id="hub-count">{} presets{}</p><ul class="presets">{items}</ul></section>"#,
            search_form(&q, &kind),
            presets.len(),
            if presets.len() > SHOWN {
                format!(" (the first {SHOWN} shown: search to narrow)")
            } else {
                String::new()
            }
        )
    };
    page_reply(
        StatusCode::OK,
        frame(
            "Hub presets",
            "/hub",
            &ctx.csrf,
            ctx.flash.as_ref(),
            &content,
        ),
    )
}

/// The lines of a report's list field: `name (type) version`.
fn refs(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            i if i.get("dest_file").is_some() => {
                format!("{} (for {})", text(&i["dest_file"]), text(&i["item"]))
            }
            i => format!(
                "{} ({}) {}",
                text(&i["name"]),
                text(&i["type"]),
                i.get("version")
                    .or(i.get("to"))
                    .map(text)
                    .unwrap_or_default()
            ),
        })
        .collect()
}

/// Install or remove, then the whole result on its own page.
pub async fn change(web: &Web, ctx: &Ctx, form: &HashMap<String, String>) -> Reply {
    let name = form.get("name").cloned().unwrap_or_default();
    let install = match form.get("action").map(String::as_str) {
        Some("install") => true,
        Some("remove") => false,
        other => {
            return super::done(
                web,
                ctx,
                "/hub",
                false,
                format!("Unknown action {other:?}: use install or remove."),
            )
        }
    };
    let mut body = json!({ "name": name });
    if let Some(t) = form.get("type").filter(|t| !t.is_empty()) {
        body["type"] = json!(t);
    }
    let (status, report) = json_of(api::change(&web.admin, &body, install).await).await;
    let verb = if install { "Install" } else { "Removal" };
    let mut summary = String::new();
    if status.is_success() {
        let _ = write!(
            summary,
            r#"<p class="flash ok" role="status" id="hub-result">{verb} of {} done{}.</p>"#,
            esc(&name),
            if report["changed"] == false {
                ": it was already in place, nothing changed"
            } else {
                ""
            }
        );
        for (key, label) in [
            ("installed", "Installed"),
            ("updated", "Updated"),
            ("removed", "Removed"),
            ("kept", "Kept (needed by others)"),
            (
                "data_files_missing",
                "Data files missing (download them, or the engine will not load the items)",
            ),
            ("warnings", "Warnings"),
        ] {
            let lines = refs(&report, key);
            if !lines.is_empty() {
                let _ = write!(summary, "<h2>{label}</h2><ul>");
                for l in lines {
                    let _ = write!(summary, "<li>{}</li>", esc(&l));
                }
                summary.push_str("</ul>");
            }
        }
    } else {
        let _ = write!(
            summary,
            r#"<p class="flash error" role="alert" id="hub-result">{verb} of {} failed: {}</p>"#,
            esc(&name),
            esc(&error_text(&report))
        );
        if let Some(out) = report["engine_output"].as_array().filter(|o| !o.is_empty()) {
            let lines: Vec<String> = out.iter().map(text).collect();
            let _ = write!(
                summary,
                "<h2>The engine said</h2><pre>{}</pre>",
                esc(&lines.join("\n"))
            );
        }
    }
    let body = format!(
        r#"<section class="card">{summary}<details><summary>The whole result</summary><pre>{}</pre></details><p><a href="/hub?q={}">Back to the presets</a></p></section>"#,
        esc(&serde_json::to_string_pretty(&report).unwrap_or_default()),
        esc(&form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()),
    );
    let code = if status.is_success() {
        StatusCode::OK
    } else {
        status
    };
    page_reply(code, frame("Hub presets", "/hub", &ctx.csrf, None, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(installed: bool, up_to_date: bool, tainted: bool) -> Value {
        json!({"name": "crowdsecurity/http-cve", "type": "collections", "version": "2.9",
            "description": "Detect CVE exploitation in http logs", "installed": installed,
            "up_to_date": up_to_date, "tainted": tainted, "deprecated": false})
    }

    #[test]
    fn badges_and_actions_follow_the_state() {
        let fresh = item("c", &preset(false, false, false));
        assert!(fresh.contains(">Install</button>") && !fresh.contains("badge"));
        let current = item("c", &preset(true, true, false));
        assert!(current.contains(">installed<") && current.contains(">Remove</button>"));
        assert!(!current.contains("Upgrade"));
        let old = item("c", &preset(true, false, false));
        assert!(old.contains(">update available<") && old.contains(">Upgrade</button>"));
        let edited = item("c", &preset(true, false, true));
        assert!(edited.contains(">locally modified<") && !edited.contains("update available"));
    }

    #[test]
    fn report_lines_name_items_and_missing_data_files() {
        let report = json!({
            "installed": [{"name": "crowdsecurity/http-cve", "type": "collections", "version": "2.9"}],
            "updated": [{"name": "crowdsecurity/base-http-scenarios", "type": "collections", "from": "0.1", "to": "0.6"}],
            "data_files_missing": [{"item": "crowdsecurity/http-bad-user-agent", "dest_file": "bad_user_agents.txt"}],
            "warnings": ["a warning"],
        });
        assert_eq!(
            refs(&report, "installed"),
            vec!["crowdsecurity/http-cve (collections) 2.9"]
        );
        assert_eq!(
            refs(&report, "updated"),
            vec!["crowdsecurity/base-http-scenarios (collections) 0.6"]
        );
        assert_eq!(
            refs(&report, "data_files_missing"),
            vec!["bad_user_agents.txt (for crowdsecurity/http-bad-user-agent)"]
        );
        assert_eq!(refs(&report, "warnings"), vec!["a warning"]);
        assert!(refs(&report, "removed").is_empty());
    }
}
