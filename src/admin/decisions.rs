//! Live decisions: list with filters and pages, unban, delete by id, ban.
//!
//! Unban lifts the decisions on the hot path first (one published change), then deletes
//! them in LAPI when a watcher is configured, so every bouncer sees it. Without a
//! watcher, or when LAPI cannot be told, the unban is a local override kept until the
//! decisions would have expired. A ban goes to LAPI through the watcher and is pulled at
//! once; in standalone mode it is a local decision in SQLite; in LAPI mode without a
//! watcher it is refused with 409 (a bouncer key cannot write).

use super::{bad, error, json_reply, only_fields, string_field, Admin, ApiError, Reply};
use crate::clock;
use crate::control::Listed;
use crate::decision::{Decision, Target};
use crate::lapi::watcher::NewBan;
use crate::store::{Meta, Verdict};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tracing::{info, warn};

/// Most decisions one page may hold.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
const DEFAULT_BAN_DURATION: &str = "4h";
const DEFAULT_REASON: &str = "manual ban from the cerberus admin API";

type CountryMap = Arc<HashMap<i64, String>>;

/// Decision id → country of the alert behind it, from LAPI: refreshed when 30 s old, or
/// when a decision to show is missing (at most once a second).
#[derive(Default)]
pub struct Countries {
    cached: tokio::sync::Mutex<Option<(Instant, CountryMap)>>,
}

impl Countries {
    async fn get(&self, admin: &Admin, wanted: &[i64]) -> Option<CountryMap> {
        let watcher = admin.watcher()?;
        let mut cached = self.cached.lock().await;
        if let Some((at, map)) = cached.as_ref() {
            let complete = wanted.iter().all(|id| map.contains_key(id));
            let age = at.elapsed();
            if age < Duration::from_secs(1) || (complete && age < Duration::from_secs(30)) {
                return Some(map.clone());
            }
        }
        let fetched = tokio::time::timeout(Duration::from_secs(5), watcher.countries(10_000)).await;
        match fetched {
            Ok(Ok(map)) => {
                let map = Arc::new(map);
                *cached = Some((Instant::now(), map.clone()));
                Some(map)
            }
            Ok(Err(e)) => {
                warn!("cannot read the alerts' countries from LAPI: {e}");
                cached.as_ref().map(|(_, m)| m.clone())
            }
            Err(_) => {
                warn!("cannot read the alerts' countries from LAPI: no answer within 5 s");
                cached.as_ref().map(|(_, m)| m.clone())
            }
        }
    }
}

fn rfc3339(unix_secs: u32) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs.into()))
        .to_string()
}

/// The JSON of one decision.
fn shown(d: &Listed, now: u32, country: Option<&String>) -> Value {
    json!({
        "id": d.id,
        "value": d.value,
        "scope": d.scope,
        "type": d.type_name,
        "origin": d.origin,
        "scenario": d.scenario,
        "country": country,
        "expires_at": rfc3339(d.expires_at),
        "remaining_seconds": d.expires_at.saturating_sub(now),
    })
}

struct Filter {
    ip: Option<IpAddr>,
    scope: Option<&'static str>,
    origin: Option<String>,
    type_name: Option<String>,
    scenario: Option<String>,
    limit: usize,
    offset: usize,
}

fn parse_filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut f = Filter {
        ip: None,
        scope: None,
        origin: None,
        type_name: None,
        scenario: None,
        limit: DEFAULT_LIMIT,
        offset: 0,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.trim().to_string();
        match key.as_ref() {
            "ip" => {
                let ip: IpAddr = value
                    .parse()
                    .map_err(|_| bad("ip", format!("{value:?} is not an IPv4 or IPv6 address")))?;
                f.ip = Some(crate::decision::normalize_ip(ip));
            }
            "scope" => {
                f.scope = Some(match value.to_ascii_lowercase().as_str() {
                    "ip" => "Ip",
                    "range" => "Range",
                    _ => return Err(bad("scope", format!("{value:?} is not a scope: use ip or range"))),
                })
            }
            "origin" => f.origin = Some(value),
            "type" => f.type_name = Some(value),
            "scenario" => f.scenario = Some(value.to_ascii_lowercase()),
            "limit" => {
                f.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(bad(
                            "limit",
                            format!("{value:?} is not a number from 1 to {MAX_LIMIT}"),
                        ))
                    }
                }
            }
            "offset" => {
                f.offset = value
                    .parse()
                    .map_err(|_| bad("offset", format!("{value:?} is not a number from 0 up")))?
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown query parameter `{other}` (known: ip, scope, origin, type, scenario, limit, offset)"
                    ),
                ))
            }
        }
    }
    Ok(f)
}

impl Filter {
    fn keeps(&self, t: Target, v: Verdict, m: &Meta, now: u32) -> bool {
        v.expires_at() > now
            && self.ip.map_or(true, |ip| t.contains(ip))
            && self.scope.map_or(true, |s| t.scope() == s)
            && self
                .origin
                .as_deref()
                .map_or(true, |o| m.origin.eq_ignore_ascii_case(o))
            && self
                .type_name
                .as_deref()
                .map_or(true, |ty| m.type_name.eq_ignore_ascii_case(ty))
            && self
                .scenario
                .as_deref()
                .map_or(true, |s| m.scenario.to_ascii_lowercase().contains(s))
    }
}

/// One page holder: ordered by id only.
struct ById<'a>(Target, Verdict, &'a Meta);

impl PartialEq for ById<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.1.id() == other.1.id()
    }
}
impl Eq for ById<'_> {}
impl PartialOrd for ById<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.1.id().cmp(&other.1.id())
    }
}

/// `GET /decisions`: the active decisions, newest (highest id) first.
pub async fn list(admin: &Admin, query: Option<&str>) -> Reply {
    let f = match parse_filter(query) {
        Ok(f) => f,
        Err(e) => return e.into(),
    };
    let snap = admin.decider.snapshot();
    let now = clock::now_secs_precise();
    // Keep the `offset + limit` highest ids in a min-heap: memory stays bounded by the
    // page, not by the million decisions that may be there.
    let keep = f.offset.saturating_add(f.limit);
    let mut heap: BinaryHeap<Reverse<ById>> = BinaryHeap::new();
    let mut total = 0usize;
    snap.for_each(|t, v, m| {
        if !f.keeps(t, v, m, now) {
            return;
        }
        total += 1;
        if heap.len() < keep {
            heap.push(Reverse(ById(t, v, m)));
        } else if heap.peek().is_some_and(|Reverse(low)| low.1.id() < v.id()) {
            heap.pop();
            heap.push(Reverse(ById(t, v, m)));
        }
    });
    // Only the page itself is turned into owned rows (a deep page skips many).
    let page: Vec<Listed> = heap
        .into_sorted_vec()
        .into_iter()
        .skip(f.offset)
        .map(|Reverse(ById(t, v, m))| Listed::new(t, v, m))
        .collect();
    let countries = if page.is_empty() {
        None
    } else if let Some(geo) = &admin.geoip {
        // The database answers for every decision, LAPI's or not.
        let map: HashMap<i64, String> = page
            .iter()
            .filter_map(|d| Some((d.id, geo.country_of(&d.value)?)))
            .collect();
        Some(Arc::new(map))
    } else {
        let ids: Vec<i64> = page.iter().map(|d| d.id).filter(|&id| id >= 0).collect();
        admin.countries.get(admin, &ids).await
    };
    let decisions: Vec<Value> = page
        .iter()
        .map(|d| shown(d, now, countries.as_ref().and_then(|c| c.get(&d.id))))
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "decisions": decisions,
            "total": total,
            "limit": f.limit,
            "offset": f.offset,
        }),
    )
}

/// What LAPI said to a delete: how many it deleted, or why it could not be told.
fn lapi_outcome(r: Option<Result<u64, String>>) -> Value {
    match r {
        None => {
            json!({"deleted": null, "error": null, "skipped": "no watcher credentials (machine_id, machine_password): the unban is local to this cerberus"})
        }
        Some(Ok(n)) => json!({"deleted": n, "error": null}),
        Some(Err(e)) => json!({"deleted": null, "error": e}),
    }
}

fn lifted_reply(value: &str, lifted: &[Listed], lapi: Option<Result<u64, String>>) -> Reply {
    let now = clock::now_secs_precise();
    let in_lapi = matches!(lapi, Some(Ok(_)));
    let local_override = !in_lapi && lifted.iter().any(|d| d.id >= 0);
    let until = lifted.iter().map(|d| d.expires_at).max();
    json_reply(
        StatusCode::OK,
        &json!({
            "value": value,
            "lifted": lifted.iter().map(|d| shown(d, now, None)).collect::<Vec<_>>(),
            "lapi": lapi_outcome(lapi),
            "local_override": local_override,
            "override_until": if local_override { until.map(rfc3339) } else { None },
        }),
    )
}

fn unban_target(body: &Value) -> Result<Target, ApiError> {
    only_fields(body, &["value"])?;
    let value = string_field(body, "value")?
        .ok_or_else(|| bad("value", "`value` is required: the IP or range to unban"))?;
    Target::parse(&value).ok_or_else(|| {
        bad(
            "value",
            format!("{value:?} is not an IP address or CIDR range"),
        )
    })
}

/// `POST /unban {"value"}`.
pub async fn unban(admin: &Admin, body: &Value) -> Reply {
    let target = match unban_target(body) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    // The hot path first: published before LAPI is even asked.
    let lifted = match admin.control.unban(target).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    };
    let lapi = match admin.watcher() {
        None => None,
        Some(w) => Some(w.delete(target).await.map_err(|e| e.to_string())),
    };
    if let Some(Err(e)) = &lapi {
        warn!("unban {target}: LAPI could not delete it ({e}); kept as a local override");
    }
    let lapi_deleted = matches!(lapi, Some(Ok(n)) if n > 0);
    if lifted.is_empty() && !lapi_deleted {
        return error(
            StatusCode::NOT_FOUND,
            format!("no active decision covers {target}"),
            Some("value"),
        );
    }
    info!(
        "unban {target} through the admin API: {} lifted here{}",
        lifted.len(),
        match &lapi {
            Some(Ok(n)) => format!(", {n} deleted in LAPI"),
            _ => String::new(),
        }
    );
    lifted_reply(&target.to_string(), &lifted, lapi)
}

/// `DELETE /decisions/{id}`.
pub async fn delete(admin: &Admin, id: &str) -> Reply {
    let Ok(id) = id.parse::<i64>() else {
        return bad(
            "id",
            format!("{id:?} is not a decision id (a whole number)"),
        )
        .into();
    };
    let lifted = match admin.control.delete_id(id).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    };
    // Negative ids are cerberus's own (standalone); LAPI never saw them.
    let lapi = match admin.watcher() {
        Some(w) if id >= 0 => Some(w.delete_id(id).await.map_err(|e| e.to_string())),
        _ => None,
    };
    let lapi_deleted = matches!(lapi, Some(Ok(n)) if n > 0);
    if lifted.is_empty() && !lapi_deleted {
        return error(
            StatusCode::NOT_FOUND,
            format!("no active decision has id {id}"),
            Some("id"),
        );
    }
    lifted_reply(
        &lifted.first().map(|d| d.value.clone()).unwrap_or_default(),
        &lifted,
        lapi,
    )
}

/// A decision type: a short word (`ban`, `captcha`, `throttle`, or a custom one).
fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `POST /ban {"value","duration","reason","type"}`.
pub async fn ban(admin: &Admin, body: &Value) -> Reply {
    if let Err(e) = only_fields(body, &["value", "duration", "reason", "type"]) {
        return e.into();
    }
    let fields = (|| -> Result<_, ApiError> {
        let value = string_field(body, "value")?
            .ok_or_else(|| bad("value", "`value` is required: the IP or range to ban"))?;
        let target = Target::parse(&value).ok_or_else(|| {
            bad(
                "value",
                format!("{value:?} is not an IP address or CIDR range"),
            )
        })?;
        let duration =
            string_field(body, "duration")?.unwrap_or_else(|| DEFAULT_BAN_DURATION.into());
        let ms = match crate::duration::parse_go_millis(duration.trim()) {
            Ok(ms) if (1000..=10 * 365 * 86_400_000).contains(&ms) => ms,
            Ok(_) => {
                return Err(bad(
                    "duration",
                    format!("{duration:?} must be from 1s to 10 years"),
                ))
            }
            Err(_) => {
                return Err(bad(
                    "duration",
                    format!("{duration:?} is not a duration (e.g. 30m, 4h, 168h)"),
                ))
            }
        };
        let reason = string_field(body, "reason")?.unwrap_or_else(|| DEFAULT_REASON.into());
        if reason.chars().count() > 256 {
            return Err(bad("reason", "`reason` is longer than 256 characters"));
        }
        let type_name = string_field(body, "type")?.unwrap_or_else(|| "ban".into());
        if !valid_type(&type_name) {
            return Err(bad(
                "type",
                format!("{type_name:?} is not a decision type (ban, captcha, throttle, or a word of letters, digits, - and _)"),
            ));
        }
        Ok((target, duration.trim().to_string(), ms, reason, type_name))
    })();
    let (target, duration, ms, reason, type_name) = match fields {
        Ok(f) => f,
        Err(e) => return e.into(),
    };
    if admin.config.standalone() {
        let d = Decision {
            id: 0,
            target,
            type_name: type_name.clone(),
            origin: "cerberus".into(),
            scenario: reason.clone(),
            expires_at: crate::decision::expiry_secs(clock::now_ms(), ms),
        };
        let d = match admin.control.ban_local(d).await {
            Ok(d) => d,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
        };
        info!(
            "local ban #{} {type_name} on {target} for {duration}: {reason}",
            d.id
        );
        return json_reply(
            StatusCode::CREATED,
            &json!({
                "value": target.to_string(),
                "type": type_name,
                "duration": duration,
                "reason": reason,
                "via": "local",
                "id": d.id,
                "expires_at": rfc3339(d.expires_at),
                "enforced": true,
            }),
        );
    }
    let Some(watcher) = admin.watcher() else {
        return error(
            StatusCode::CONFLICT,
            "cerberus syncs from LAPI but has no watcher credentials: a bouncer key cannot create decisions. \
             Set machine_id and machine_password (`cscli machines add cerberus --password ...`), \
             or ban with `cscli decisions add`",
            None,
        );
    };
    let ban = NewBan {
        target,
        duration: duration.clone(),
        reason: reason.clone(),
        type_name: type_name.clone(),
    };
    if let Err(e) = watcher.ban(&ban).await {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("LAPI did not take the ban: {e}"),
            None,
        );
    }
    // Pull now so the hot path has it when this answer leaves.
    let pulled = admin.control.pull_now().await;
    let probe = match target {
        Target::V4 { addr, .. } => IpAddr::from(std::net::Ipv4Addr::from(addr)),
        Target::V6 { addr, .. } => IpAddr::from(std::net::Ipv6Addr::from(addr)),
    };
    let answer = admin.decider.answer(probe);
    let enforced = answer.type_name.as_deref() == Some(type_name.as_str())
        || (answer.remediation.is_some() && !admin.decider.enabled());
    info!("ban {type_name} on {target} for {duration} created in LAPI: {reason}");
    let mut out = json!({
        "value": target.to_string(),
        "type": type_name,
        "duration": duration,
        "reason": reason,
        "via": "lapi",
        "origin": "cscli",
        "enforced": enforced,
    });
    match pulled {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            out["warning"] = json!(format!(
                "created in LAPI, but the pull that brings it here failed: {e}"
            ))
        }
        Err(e) => out["warning"] = json!(e.to_string()),
    }
    json_reply(StatusCode::CREATED, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_bad_field() {
        for (q, field) in [
            ("ip=300.1.1.1", "ip"),
            ("scope=country", "scope"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("offset=-1", "offset"),
            ("colour=red", "colour"),
        ] {
            let r: Reply = parse_filter(Some(q)).err().expect(q).into();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
            let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                r.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["field"], field, "{q}: {v}");
        }
        let f = parse_filter(Some(
            "ip=%3A%3Affff%3A192.0.2.1&scope=RANGE&limit=7&offset=3",
        ))
        .ok()
        .unwrap();
        assert_eq!(f.ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!((f.scope, f.limit, f.offset), (Some("Range"), 7, 3));
    }

    #[test]
    fn decision_types() {
        assert!(valid_type("ban") && valid_type("captcha") && valid_type("my-type_2"));
        assert!(!valid_type("") && !valid_type("ban now") && !valid_type(&"x".repeat(65)));
    }
}
