//! Live decisions: filters, server-side pages (the admin API's own listing, which keeps
//! only one page in memory whatever the number of decisions), a fragment of rows that
//! the page polls so new decisions appear without a reload, Unban per row or for a
//! selection (after a confirmation page), and the Ban form. An unban reports success
//! only once the hot path allows the address.

use super::html::{csrf_field, esc, frame, left, text};
use super::{done, error_text, json_of, page_reply, Ctx, Reply, Web};
use crate::admin::decisions as api;
use crate::decision::Target;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;

/// Decisions on one page.
pub const PAGE: usize = 50;
const FILTERS: &[(&str, &str)] = &[
    ("ip", "Filter by IP"),
    ("origin", "Filter by origin"),
    ("type", "Filter by type"),
    ("scenario", "Filter by scenario"),
];
/// The duration presets of the Ban form.
pub const PRESETS: &[&str] = &["1h", "4h", "24h", "7d"];

/// The filters and page of a request, from its query string.
struct View {
    filters: Vec<(&'static str, String)>,
    page: usize,
}

impl View {
    fn parse(query: &str) -> View {
        let mut v = View {
            filters: Vec::new(),
            page: 1,
        };
        for (k, val) in form_urlencoded::parse(query.as_bytes()) {
            let val = val.trim().to_string();
            if k == "page" {
                v.page = val.parse().unwrap_or(1).max(1);
            } else if let Some((key, _)) = FILTERS.iter().find(|(f, _)| *f == k) {
                if !val.is_empty() {
                    v.filters.push((key, val));
                }
            }
        }
        v
    }

    fn get(&self, key: &str) -> &str {
        self.filters
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    fn query(&self, page: usize) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.filters {
            q.append_pair(k, v);
        }
        q.append_pair("page", &page.to_string());
        q.finish()
    }

    /// The admin listing's query for this page.
    fn api_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.filters {
            q.append_pair(k, v);
        }
        q.append_pair("limit", &PAGE.to_string());
        q.append_pair("offset", &((self.page - 1) * PAGE).to_string());
        q.finish()
    }
}

/// One page of decisions from the admin listing: (decisions, total) or the error.
async fn fetch(web: &Web, view: &View) -> Result<(Vec<Value>, u64), String> {
    let (status, body) = json_of(api::list(&web.admin, Some(&view.api_query())).await).await;
    if !status.is_success() {
        return Err(error_text(&body));
    }
    let list = body["decisions"].as_array().cloned().unwrap_or_default();
    Ok((list, body["total"].as_u64().unwrap_or(0)))
}

fn country(d: &Value) -> String {
    match d["country"].as_str().filter(|c| !c.is_empty()) {
        Some(code) => match super::countries::name(code) {
            Some(name) => format!("{} ({})", esc(name), esc(code)),
            None => esc(code),
        },
        None => "–".into(),
    }
}

/// The rows of a page (also the polled fragment).
fn rows(list: &[Value]) -> String {
    let now = crate::clock::now_secs_precise() as u64;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str(r#"<tr><td colspan="8">No active decision matches.</td></tr>"#);
    }
    for d in list {
        let value = text(&d["value"]);
        let remaining = d["remaining_seconds"].as_u64().unwrap_or(0);
        let _ = write!(
            out,
            r#"<tr data-id="{id}"><td><input type="checkbox" form="bulk" name="value" value="{v}" aria-label="Select {v}"></td><td>{v}</td><td>{country}</td><td>{scenario}</td><td>{origin}</td><td>{ty}</td><td data-expires="{exp}">{left}</td><td><form method="get" action="/decisions/confirm"><input type="hidden" name="value" value="{v}"><button type="submit" aria-label="Unban {v}">Unban</button></form></td></tr>"#,
            id = esc(&text(&d["id"])),
            v = esc(&value),
            country = country(d),
            scenario = esc(&text(&d["scenario"])),
            origin = esc(&text(&d["origin"])),
            ty = esc(&text(&d["type"])),
            exp = now + remaining,
            left = left(remaining),
        );
    }
    out
}

pub async fn rows_fragment(web: &Web, query: &str) -> Reply {
    let view = View::parse(query);
    match fetch(web, &view).await {
        Ok((list, _)) => page_reply(StatusCode::OK, rows(&list)),
        Err(e) => page_reply(
            StatusCode::BAD_REQUEST,
            format!("<tr><td colspan=\"8\">{}</td></tr>", esc(&e)),
        ),
    }
}

fn ban_form(csrf: &str) -> String {
    let mut presets = String::new();
    for p in PRESETS {
        let _ = write!(presets, r#"<option value="{p}"></option>"#);
    }
    format!(
        r#"<section class="card"><h2>Ban</h2>
<form method="post" action="/decisions/ban" class="grid">{csrf}
<label for="ban-value">IP or range</label><input id="ban-value" name="value" required placeholder="192.0.2.7 or 198.51.100.0/24">
<label for="ban-duration">Duration</label><input id="ban-duration" name="duration" list="durations" value="4h" required aria-describedby="duration-hint">
<datalist id="durations">{presets}</datalist>
<span id="duration-hint" class="hint">1h, 4h, 24h, 7d or any duration such as 90m</span>
<label for="ban-reason">Reason</label><input id="ban-reason" name="reason" maxlength="256" placeholder="manual ban">
<label for="ban-type">Type</label><select id="ban-type" name="type"><option>ban</option><option>captcha</option><option>throttle</option></select>
<button type="submit">Ban</button>
</form></section>"#,
        csrf = csrf_field(csrf)
    )
}

fn filters_form(view: &View) -> String {
    let mut fields = String::new();
    for (key, label) in FILTERS {
        let _ = write!(
            fields,
            r#"<label for="f-{key}">{label}</label><input id="f-{key}" name="{key}" value="{}">"#,
            esc(view.get(key))
        );
    }
    format!(
        r#"<form method="get" action="/decisions" class="filters" role="search" aria-label="Filter decisions">{fields}<button type="submit">Filter</button> <a href="/decisions">Clear</a></form>"#
    )
}

fn pager(view: &View, total: u64) -> String {
    let pages = (total as usize).div_ceil(PAGE).max(1);
    let mut out = format!(
        r#"<nav class="pager" aria-label="Pages"><span id="page-info">Page {} of {pages} ({total} decisions)</span> "#,
        view.page
    );
    if view.page > 1 {
        let _ = write!(
            out,
            r#"<a href="/decisions?{}" rel="prev">Previous page</a> "#,
            esc(&view.query(view.page - 1))
        );
    }
    if view.page < pages {
        let _ = write!(
            out,
            r#"<a href="/decisions?{}" rel="next">Next page</a>"#,
            esc(&view.query(view.page + 1))
        );
    }
    out.push_str("</nav>");
    out
}

pub async fn page(web: &Web, ctx: &Ctx, query: &str) -> Reply {
    let view = View::parse(query);
    let (list, total, problem) = match fetch(web, &view).await {
        Ok((l, t)) => (l, t, None),
        Err(e) => (Vec::new(), 0, Some(e)),
    };
    let problem = problem.map_or(String::new(), |e| {
        format!(r#"<p class="flash error" role="alert">{}</p>"#, esc(&e))
    });
    let poll = if view.page == 1 {
        format!(r#" data-poll="/decisions/rows?{}""#, esc(&view.query(1)))
    } else {
        String::new()
    };
    let body = format!(
        r#"{ban}
<section class="card"><h2>Active decisions</h2>
{filters}{problem}
<form method="get" action="/decisions/confirm" id="bulk"><button type="submit">Unban selected</button></form>
<div class="scroll"><table class="decisions">
<thead><tr><th scope="col"><span class="sr">Select</span></th><th scope="col">IP or range</th><th scope="col">Country</th><th scope="col">Scenario</th><th scope="col">Origin</th><th scope="col">Type</th><th scope="col">Time left</th><th scope="col"><span class="sr">Action</span></th></tr></thead>
<tbody id="decision-rows"{poll}>{rows}</tbody>
</table></div>
{pager}</section>"#,
        ban = ban_form(&ctx.csrf),
        filters = filters_form(&view),
        rows = rows(&list),
        pager = pager(&view, total),
    );
    page_reply(
        StatusCode::OK,
        frame(
            "Live decisions",
            "/decisions",
            &ctx.csrf,
            ctx.flash.as_ref(),
            &body,
        ),
    )
}

/// The values of a form or query: one per line (a selection repeats the key).
fn values(joined: &str) -> Vec<String> {
    joined
        .split('\n')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// `GET /decisions/confirm?value=...`: asks before unbanning.
pub fn confirm(_web: &Web, ctx: &Ctx, query: &str) -> Reply {
    let mut picked = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "value" {
            picked.extend(values(&v));
        }
    }
    if picked.is_empty() {
        let body =
            r#"<p>Nothing was selected. <a href="/decisions">Back to the decisions</a>.</p>"#;
        return page_reply(
            StatusCode::BAD_REQUEST,
            frame("Unban", "/decisions", &ctx.csrf, None, body),
        );
    }
    let mut items = String::new();
    let mut hidden = String::new();
    for v in &picked {
        let _ = write!(items, "<li>{}</li>", esc(v));
        let _ = write!(
            hidden,
            r#"<input type="hidden" name="value" value="{}">"#,
            esc(v)
        );
    }
    let body = format!(
        r#"<section class="card"><p>Lift every decision on these addresses? Their requests will be allowed.</p><ul>{items}</ul>
<form method="post" action="/decisions/unban">{csrf}{hidden}<button type="submit">Confirm unban</button> <a href="/decisions">Cancel</a></form></section>"#,
        csrf = csrf_field(&ctx.csrf)
    );
    page_reply(
        StatusCode::OK,
        frame("Unban", "/decisions", &ctx.csrf, None, &body),
    )
}

/// An address the hot path can be asked about for `target` (its first for a range).
fn probe(target: &Target) -> Option<IpAddr> {
    target.to_string().split('/').next()?.parse().ok()
}

pub async fn unban(web: &Web, ctx: &Ctx, form: &HashMap<String, String>) -> Reply {
    let picked = values(form.get("value").map(String::as_str).unwrap_or(""));
    if picked.is_empty() {
        return done(
            web,
            ctx,
            "/decisions",
            false,
            "Nothing to unban: no address was given.",
        );
    }
    let mut lines = Vec::new();
    let mut all_ok = true;
    for v in &picked {
        let (status, body) = json_of(api::unban(&web.admin, &json!({ "value": v })).await).await;
        if !status.is_success() {
            all_ok = false;
            lines.push(format!("{v}: {}", error_text(&body)));
            continue;
        }
        let still = Target::parse(v)
            .as_ref()
            .and_then(probe)
            .map(|ip| web.admin.decider.answer(ip))
            .filter(|a| !a.allows());
        match still {
            None => lines.push(format!("{v} is unbanned: the hot path allows it now.")),
            Some(a) => {
                all_ok = false;
                lines.push(format!(
                    "{v}: lifted, but still refused by decision {} ({}) of {}.",
                    a.id.map_or("?".into(), |i| i.to_string()),
                    a.type_name.as_deref().unwrap_or("?"),
                    a.origin.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    done(web, ctx, "/decisions", all_ok, lines.join(" "))
}

/// `7d` → `168h` (the admin API takes Go durations, which have no days).
fn duration(d: &str) -> String {
    let d = d.trim();
    match d.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => format!("{}h", n * 24),
        None => d.to_string(),
    }
}

pub async fn ban(web: &Web, ctx: &Ctx, form: &HashMap<String, String>) -> Reply {
    let field = |k: &str| {
        form.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut body = json!({});
    if let Some(v) = field("value") {
        body["value"] = json!(v);
    }
    if let Some(d) = field("duration") {
        body["duration"] = json!(duration(&d));
    }
    if let Some(r) = field("reason") {
        body["reason"] = json!(r);
    }
    if let Some(t) = field("type") {
        body["type"] = json!(t);
    }
    let (status, answer) = json_of(api::ban(&web.admin, &body).await).await;
    if !status.is_success() {
        let label = match answer["field"].as_str() {
            Some("value") => "IP or range: ",
            Some("duration") => "Duration: ",
            Some("reason") => "Reason: ",
            Some("type") => "Type: ",
            _ => "",
        };
        return done(
            web,
            ctx,
            "/decisions",
            false,
            format!("Not banned. {label}{}", error_text(&answer)),
        );
    }
    let value = text(&answer["value"]);
    // Shown filtered to the new decision: local bans take the lowest ids, so the newest
    // is not on the first page of a long list.
    let to = Target::parse(&value)
        .as_ref()
        .and_then(probe)
        .map_or("/decisions".to_string(), |ip| format!("/decisions?ip={ip}"));
    done(
        web,
        ctx,
        &to,
        true,
        format!(
            "Banned {value} ({}) for {}; expires {}.",
            text(&answer["type"]),
            text(&answer["duration"]),
            text(&answer["expires_at"])
        ),
    )
}

/// Active decisions by scenario (all of them) and by country (the newest 1000, whose
/// countries are known), for the overview.
pub async fn tallies(web: &Web) -> (HashMap<String, u64>, HashMap<String, u64>) {
    let snap = web.admin.decider.snapshot();
    let now = crate::clock::now_secs_precise();
    let mut scenarios: HashMap<String, u64> = HashMap::new();
    snap.for_each(|_, v, m| {
        if v.expires_at() > now {
            *scenarios.entry(m.scenario.to_string()).or_default() += 1;
        }
    });
    let mut countries: HashMap<String, u64> = HashMap::new();
    let q = format!("limit={}", api::MAX_LIMIT);
    let (status, body) = json_of(api::list(&web.admin, Some(&q)).await).await;
    if status.is_success() {
        for d in body["decisions"].as_array().into_iter().flatten() {
            if let Some(c) = d["country"].as_str().filter(|c| !c.is_empty()) {
                *countries.entry(c.to_string()).or_default() += 1;
            }
        }
    }
    (scenarios, countries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_hours() {
        assert_eq!(duration("7d"), "168h");
        assert_eq!(duration(" 4h "), "4h");
        assert_eq!(duration("90m"), "90m");
    }

    #[test]
    fn view_keeps_known_filters_and_pages() {
        let v = View::parse("ip=1.2.3.4&origin=&type=ban&page=3&bogus=1");
        assert_eq!(v.page, 3);
        assert_eq!(v.get("ip"), "1.2.3.4");
        assert_eq!(v.get("origin"), "");
        assert_eq!(v.api_query(), "ip=1.2.3.4&type=ban&limit=50&offset=100");
        assert_eq!(v.query(4), "ip=1.2.3.4&type=ban&page=4");
        assert_eq!(View::parse("page=0").page, 1);
    }

    #[test]
    fn rows_escape_what_lapi_sent() {
        let r = rows(&[
            json!({"id": 1, "value": "1.2.3.4", "scenario": "<script>x</script>",
            "origin": "crowdsec", "type": "ban", "remaining_seconds": 60, "country": "FR"}),
        ]);
        assert!(r.contains("&lt;script&gt;"));
        assert!(!r.contains("<script>"));
        assert!(r.contains("France (FR)"));
        assert!(r.contains(">Unban</button>"));
    }
}
