//! Diagnostics: the checks of `cerberus diagnose` (the same [`crate::admin::diagnostics`]
//! functions), each with its state and fix, the connectivity latencies, and a button that
//! copies the whole JSON.

use super::html::{esc, frame, text};
use super::{json_of, page_reply, Ctx, Reply, Web};
use crate::admin::diagnostics as api;
use hyper::StatusCode;
use serde_json::json;
use std::fmt::Write;

pub async fn page(web: &Web, ctx: &Ctx) -> Reply {
    let (checks, (_, connectivity)) = tokio::join!(api::checks(&web.admin), async {
        json_of(api::connectivity(&web.admin).await).await
    });
    let mut rows = String::new();
    for c in &checks {
        let _ = write!(
            rows,
            r#"<tr class="{st}"><th scope="row">{}</th><td><span class="badge {st}">{st}</span></td><td>{}</td><td>{}</td></tr>"#,
            esc(c.name),
            esc(&c.detail),
            esc(c.fix.as_deref().unwrap_or("")),
            st = esc(c.status),
        );
    }
    let mut conn = String::new();
    for (key, label) in [("lapi", "LAPI"), ("capi", "Central API")] {
        let v = &connectivity[key];
        let _ = write!(
            conn,
            r#"<tr><th scope="row">{label}</th><td id="conn-{key}">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&text(&v["status"])),
            v["latency_ms"]
                .as_u64()
                .map_or("–".into(), |ms| format!("{ms} ms")),
            esc(&v
                .get("error")
                .or(v.get("detail"))
                .map(text)
                .unwrap_or_default()),
        );
    }
    let all = json!({ "checks": checks, "connectivity": connectivity });
    let body = format!(
        r#"<section class="card"><h2>Checks</h2><div class="scroll"><table><thead><tr><th scope="col">Check</th><th scope="col">State</th><th scope="col">Detail</th><th scope="col">Fix</th></tr></thead><tbody>{rows}</tbody></table></div></section>
<section class="card"><h2>Connectivity</h2><div class="scroll"><table><thead><tr><th scope="col">Service</th><th scope="col">State</th><th scope="col">Latency</th><th scope="col">Detail</th></tr></thead><tbody>{conn}</tbody></table></div></section>
<section class="card"><h2>JSON</h2><button type="button" data-copy="diag-json">Copy JSON</button> <span id="copy-state" role="status"></span>
<pre id="diag-json">{}</pre></section>"#,
        esc(&serde_json::to_string_pretty(&all).unwrap_or_default())
    );
    page_reply(
        StatusCode::OK,
        frame(
            "Diagnostics",
            "/diagnostics",
            &ctx.csrf,
            ctx.flash.as_ref(),
            &body,
        ),
    )
}
