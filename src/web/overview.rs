//! Overview: the "CrowdSec protection" switch, mode, LAPI health and last sync, the
//! engine's state (live, by polling `/overview/state`), decisions by origin, requests
//! checked and refused (last hour, 24 h), a chart of refusals and the top scenarios.

use super::html::{csrf_field, esc, frame, text};
use super::{done, json_of, page_reply, Ctx, Reply, Web};
use crate::admin::diagnostics;
use hyper::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// The live part: switch state, engine, LAPI.
async fn state_html(web: &Web, status: &Value) -> String {
    let _ = web;
    let mut out = String::new();
    let enabled = status["enabled"].as_bool().unwrap_or(false);
    let _ = write!(
        out,
        r#"<dl class="facts"><dt>Protection</dt><dd id="protection-state">{}</dd><dt>Mode</dt><dd>{}</dd>"#,
        if enabled {
            "on: requests are checked"
        } else {
            "off: every request is allowed"
        },
        esc(&text(&status["mode"]))
    );
    if let Some(engine) = status.get("engine").filter(|e| !e.is_null()) {
        let st = &engine["status"];
        let state = text(&st["state"]);
        let shown = match state.as_str() {
            "starting" => "starting".to_string(),
            "running" if status["lapi"]["health"]["status"] != "healthy" => {
                "up, waiting for its LAPI".to_string()
            }
            "running" => "up".to_string(),
            other => other.to_string(),
        };
        let _ = write!(
            out,
            r#"<dt>Engine</dt><dd id="engine-state">{}</dd>"#,
            esc(&shown)
        );
        if !st["last_error"].is_null() {
            let _ = write!(
                out,
                r#"<dt>Engine error</dt><dd class="error"><pre>{}</pre></dd>"#,
                esc(&text(&st["last_error"]))
            );
        }
    }
    let lapi = &status["lapi"];
    if lapi.is_null() {
        out.push_str("<dt>LAPI</dt><dd>none (standalone: decisions come from this console and the admin API)</dd>");
    } else {
        let health = &lapi["health"];
        let _ = write!(
            out,
            r#"<dt>LAPI</dt><dd id="lapi-health">{} ({}){}</dd><dt>Last sync</dt><dd>{}</dd>"#,
            esc(&text(&health["status"])),
            esc(&text(&lapi["url"])),
            health
                .get("error")
                .and_then(Value::as_str)
                .map_or(String::new(), |e| format!(": {}", esc(e))),
            match lapi["last_sync_age_seconds"].as_u64() {
                Some(age) => format!("{} ago", super::html::left(age)),
                None => "never".into(),
            }
        );
    }
    out.push_str("</dl>");
    out
}

async fn status(web: &Web) -> Value {
    json_of(diagnostics::status(&web.admin).await).await.1
}

pub async fn state_fragment(web: &Web) -> Reply {
    let s = status(web).await;
    page_reply(StatusCode::OK, state_html(web, &s).await)
}

/// The bars of the refusals chart: an inline SVG, one bar per hour.
fn chart(bars: &[u64]) -> String {
    let max = bars.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (24u64 * 12, 80u64);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {}" role="img" aria-labelledby="chart-title"><title id="chart-title">Refused requests per hour over the last 24 hours (most: {max})</title>"#,
        h + 2
    );
    for (i, &b) in bars.iter().enumerate() {
        let bh = b * h / max;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="{}" class="bar"><title>{} refused, {} h ago</title></rect>"#,
            i as u64 * 12,
            h - bh,
            bh.max(1),
            b,
            bars.len() - i
        );
    }
    svg.push_str("</svg>");
    svg
}

fn top(counts: HashMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn list(title: &str, items: &[(String, u64)]) -> String {
    let mut out = format!("<section><h2>{}</h2><ol class=\"top\">", esc(title));
    if items.is_empty() {
        out.push_str("<li>none</li>");
    }
    for (k, n) in items {
        let _ = write!(out, "<li>{} <span class=\"count\">{n}</span></li>", esc(k));
    }
    out.push_str("</ol></section>");
    out
}

pub async fn page(web: &Web, ctx: &Ctx) -> Reply {
    let s = status(web).await;
    let enabled = s["enabled"].as_bool().unwrap_or(false);
    let now = super::history::now(&web.admin.decider);
    let hour = web.history.window(now, 60);
    let day = web.history.window(now, 24 * 60);
    let bars = web.history.refusals(now, 24, 60);
    let (scenarios, countries) = super::decisions::tallies(web).await;
    let mut by_origin = String::new();
    if let Some(map) = s["decisions"]["by_origin"].as_object() {
        let sorted: BTreeMap<_, _> = map.iter().collect();
        for (origin, n) in sorted {
            let _ = write!(
                by_origin,
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                esc(&origin_label(origin)),
                n
            );
        }
    }
    if by_origin.is_empty() {
        by_origin.push_str("<tr><td colspan=\"2\">no active decision</td></tr>");
    }
    let body = format!(
        r#"<section class="card">
<form method="post" action="/protection" class="switch-form">{csrf}
<input type="hidden" name="on" value="{next}">
<button type="submit" role="switch" aria-checked="{enabled}" class="switch" id="protection-switch">CrowdSec protection</button>
</form>
<div id="live-state" data-poll="/overview/state">{state}</div>
</section>
<section class="card"><h2>Requests</h2>
<dl class="facts"><dt>Checked, last hour</dt><dd>{h_checked}</dd><dt>Refused, last hour</dt><dd>{h_refused}</dd>
<dt>Checked, 24 hours</dt><dd>{d_checked}</dd><dt>Refused, 24 hours</dt><dd>{d_refused}</dd></dl>
{chart}
</section>
<section class="card"><h2>Decisions by origin</h2>
<table><thead><tr><th scope="col">Origin</th><th scope="col">Active</th></tr></thead><tbody>{by_origin}</tbody></table>
</section>
<div class="cols">{scen}{countries}</div>"#,
        csrf = csrf_field(&ctx.csrf),
        next = !enabled,
        state = state_html(web, &s).await,
        h_checked = hour.checked,
        h_refused = hour.refused,
        d_checked = day.checked,
        d_refused = day.refused,
        chart = chart(&bars),
        scen = list("Top scenarios", &top(scenarios, 5)),
        countries = list("Top countries", &top(countries, 5)),
    );
    page_reply(
        StatusCode::OK,
        frame("Overview", "/", &ctx.csrf, ctx.flash.as_ref(), &body),
    )
}

/// What an origin means to an operator.
pub fn origin_label(origin: &str) -> String {
    match origin {
        "CAPI" => "CAPI (community blocklist)".into(),
        "crowdsec" => "crowdsec (local detection)".into(),
        "cscli" => "cscli (manual)".into(),
        "console" => "console (manual, CrowdSec console)".into(),
        "cerberus" => "cerberus (manual, this console or the admin API)".into(),
        o if o.starts_with("lists") => format!("{o} (blocklist)"),
        o => o.to_string(),
    }
}

pub fn toggle(web: &Web, ctx: &Ctx, form: &HashMap<String, String>) -> Reply {
    let on = match form.get("on").map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        other => {
            return done(
                web,
                ctx,
                "/",
                false,
                format!("`on` must be true or false, got {other:?}"),
            )
        }
    };
    let _ = crate::admin::toggle(&web.admin, on);
    done(
        web,
        ctx,
        "/",
        true,
        if on {
            "CrowdSec protection is on: requests are checked again."
        } else {
            "CrowdSec protection is off: every request is allowed."
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_bar_per_hour_scaled_to_the_most() {
        let svg = chart(&[0, 5, 10]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"y="0" width="10" height="80""#), "{svg}");
        assert!(svg.contains(r#"y="40" width="10" height="40""#), "{svg}");
    }

    #[test]
    fn top_sorts_by_count_then_name() {
        let m: HashMap<String, u64> = [("b", 2), ("a", 2), ("c", 5), ("d", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let t = top(m, 3);
        assert_eq!(t, vec![("c".into(), 5), ("a".into(), 2), ("b".into(), 2)]);
    }
}
