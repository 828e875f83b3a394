//! Metric names in one place, and the Prometheus exporter. Counters end in `_total`,
//! durations in `_seconds`; no label takes unbounded values (never an IP).
//!
//! [`install`] puts the Prometheus recorder in place; it runs first thing in
//! [`crate::app::start`], because the doors register their counters when they are built
//! and a handle registered before the recorder exists counts into nothing. The admin
//! API's `GET /metrics` calls [`observe`] (gauges read from the live state) and then
//! [`render`]. Without a recorder (a test binary that installed its own) the macros cost
//! next to nothing and [`render`] answers `None`.

use crate::lapi::sync::SyncStats;
use crate::store::{Decider, Meta, Snapshot};
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// LAPI pulls by `kind` (startup, delta) and `outcome` (ok, error).
pub const LAPI_REQUESTS: &str = "cerberus_lapi_requests_total";
/// Failed LAPI pulls by `reason` (connect, timeout, forbidden, status_5xx, ...).
pub const LAPI_FAILURES: &str = "cerberus_lapi_failures_total";
/// Bytes of decision JSON received in successful pulls.
pub const LAPI_BYTES: &str = "cerberus_lapi_bytes_total";
/// Decisions not taken, by `reason` (bad_value, unsupported_scope, filtered_type, ...).
pub const DECISIONS_REJECTED: &str = "cerberus_decisions_rejected_total";
/// Unexpired decisions by `origin`, `scope` (Ip, Range) and `type`; set by [`observe`].
pub const ACTIVE_DECISIONS: &str = "cerberus_active_decisions";
/// Every decision in the published snapshot, expired ones included until purged.
pub const SNAPSHOT_DECISIONS: &str = "cerberus_snapshot_decisions";
/// Unix time of the last successful pull.
pub const LAST_SYNC: &str = "cerberus_last_sync_timestamp_seconds";
/// Duration of successful pulls by `kind`.
pub const SYNC_DURATION: &str = "cerberus_sync_duration_seconds";
/// Generation of the published snapshot.
pub const SNAPSHOT_GENERATION: &str = "cerberus_snapshot_generation";
/// Writes to SQLite that failed.
pub const PERSIST_ERRORS: &str = "cerberus_persist_errors_total";
/// 1 while protection is on, 0 while every lookup is allowed (bypassed).
pub const PROTECTION_ENABLED: &str = "cerberus_protection_enabled";
/// 1 while `on_lapi_unreachable` (open or closed) applies because LAPI is stale.
pub const LAPI_OUTAGE: &str = "cerberus_lapi_outage";
/// Wall-clock jumps seen (against the monotonic clock), by `direction` (forward, backward).
pub const CLOCK_JUMPS: &str = "cerberus_clock_jumps_total";
/// Decisions a full pull left out, kept until a second full pull confirms they are gone.
pub const SYNC_HELD: &str = "cerberus_sync_held_decisions";

/// Lookups answered by `door` (socket, forward_auth) and `remediation` (allow, ban,
/// captcha, throttle, other, bypassed).
pub const LOOKUPS: &str = "cerberus_lookups_total";
/// Time to decide and encode one lookup, by `door` (the socket's own work, not the
/// transport; forward_auth: the whole request inside cerberus).
pub const LOOKUP_DURATION: &str = "cerberus_lookup_duration_seconds";
/// Socket connections refused because `socket_max_connections` were open.
pub const SOCKET_REFUSED: &str = "cerberus_socket_connections_refused_total";
/// Malformed frames received on the socket (each closes its connection).
pub const SOCKET_BAD_FRAMES: &str = "cerberus_socket_bad_frames_total";
/// Socket connections closed because they held part of a frame for a whole idle period.
pub const SOCKET_STALLED: &str = "cerberus_socket_stalled_closed_total";
/// HTTP connections (forward_auth, admin) closed unserved, by `door` and `reason` (`cap`:
/// the door's connection cap, sized from the descriptor budget, was reached).
pub const HTTP_SHED: &str = "cerberus_http_connections_shed_total";
/// HTTP connections closed by `door` and `reason` (`header_timeout`, `write_timeout`,
/// `idle_timeout`) because the peer stalled.
pub const HTTP_TIMEOUTS: &str = "cerberus_http_connections_timed_out_total";
/// forward_auth requests answered 400 because no usable client IP was found.
pub const FORWARD_AUTH_NO_CLIENT_IP: &str = "cerberus_forward_auth_no_client_ip_total";
/// Pushes of usage metrics to LAPI by `outcome` (ok, not_found, connect, timeout,
/// status_4xx, status_5xx, other).
pub const USAGE_PUSHES: &str = "cerberus_usage_metrics_push_total";
/// Console enrollments by `outcome` (enrolled, already_enrolled, expired_key,
/// invalid_key, unauthorized, unreachable, server_error, engine_config, other).
pub const CONSOLE_ENROLLMENTS: &str = "cerberus_console_enrollments_total";
/// Heartbeats to the central API by `outcome` (ok, failed).
pub const CONSOLE_HEARTBEATS: &str = "cerberus_console_heartbeats_total";
/// 1 when the last heartbeat to the central API succeeded, else 0.
pub const CONSOLE_HEARTBEAT_OK: &str = "cerberus_console_heartbeat_ok";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, unit and help text (the `# HELP` line).
pub const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        LAPI_REQUESTS,
        Kind::Counter,
        Unit::Count,
        "LAPI decision pulls by kind (startup, delta) and outcome (ok, error).",
    ),
    (
        CLOCK_JUMPS,
        Kind::Counter,
        Unit::Count,
        "Wall-clock jumps seen against the monotonic clock, by direction; each skips the purge and forces a full resync.",
    ),
    (
        SYNC_HELD,
        Kind::Gauge,
        Unit::Count,
        "Decisions the last full pull left out, kept until a second full pull (or LAPI's deleted list) confirms.",
    ),
    (
        LAPI_FAILURES,
        Kind::Counter,
        Unit::Count,
        "Failed LAPI decision pulls by reason.",
    ),
    (
        LAPI_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "Bytes of decision JSON received in successful LAPI pulls.",
    ),
    (
        DECISIONS_REJECTED,
        Kind::Counter,
        Unit::Count,
        "Decisions from LAPI not taken, by reason (data errors and operator filters).",
    ),
    (
        ACTIVE_DECISIONS,
        Kind::Gauge,
        Unit::Count,
        "Unexpired decisions held, by origin, scope (Ip, Range) and type.",
    ),
    (
        SNAPSHOT_DECISIONS,
        Kind::Gauge,
        Unit::Count,
        "Decisions in the published snapshot, expired ones included until purged.",
    ),
    (
        LAST_SYNC,
        Kind::Gauge,
        Unit::Seconds,
        "Unix time of the last successful LAPI pull.",
    ),
    (
        SYNC_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Duration of successful LAPI pulls (fetch, parse, publish) by kind.",
    ),
    (
        SNAPSHOT_GENERATION,
        Kind::Gauge,
        Unit::Count,
        "Generation of the published decision snapshot (one more per publish).",
    ),
    (
        PERSIST_ERRORS,
        Kind::Counter,
        Unit::Count,
        "Writes to the SQLite database in data_dir that failed.",
    ),
    (
        PROTECTION_ENABLED,
        Kind::Gauge,
        Unit::Count,
        "1 while protection is on; 0 while every lookup is allowed (counted as bypassed).",
    ),
    (
        LAPI_OUTAGE,
        Kind::Gauge,
        Unit::Count,
        "1 while LAPI is stale and on_lapi_unreachable (open or closed) decides every lookup.",
    ),
    (
        LOOKUPS,
        Kind::Counter,
        Unit::Count,
        "Lookups answered by door (socket, forward_auth) and remediation (allow, ban, captcha, throttle, other, bypassed).",
    ),
    (
        LOOKUP_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time cerberus spends on one lookup, by door.",
    ),
    (
        SOCKET_REFUSED,
        Kind::Counter,
        Unit::Count,
        "Socket connections refused because socket_max_connections were open.",
    ),
    (
        SOCKET_BAD_FRAMES,
        Kind::Counter,
        Unit::Count,
        "Malformed frames received on the socket (each closes its connection).",
    ),
    (
        SOCKET_STALLED,
        Kind::Counter,
        Unit::Count,
        "Socket connections closed because they held part of a frame for a whole idle period.",
    ),
    (
        HTTP_SHED,
        Kind::Counter,
        Unit::Count,
        "HTTP connections closed unserved, by door (forward_auth, admin) and reason (cap: the door's connection cap was reached).",
    ),
    (
        HTTP_TIMEOUTS,
        Kind::Counter,
        Unit::Count,
        "HTTP connections closed by door and reason (header_timeout, write_timeout, idle_timeout).",
    ),
    (
        FORWARD_AUTH_NO_CLIENT_IP,
        Kind::Counter,
        Unit::Count,
        "forward_auth requests answered 400 because no usable client IP was found.",
    ),
    (
        USAGE_PUSHES,
        Kind::Counter,
        Unit::Count,
        "Usage metrics pushes to LAPI by outcome (ok, not_found, connect, timeout, status_4xx, status_5xx, other).",
    ),
    (
        HUB_OPERATIONS,
        Kind::Counter,
        Unit::Count,
        "Hub preset operations by op (refresh, install, remove) and outcome (ok or the error kind).",
    ),
    (
        ENGINE_CAPI_ENABLED,
        Kind::Gauge,
        Unit::Count,
        "1 while the managed CrowdSec engine runs with its central API (community blocklist on); 0 when it runs with -no-capi.",
    ),
    (
        ENGINE_UP,
        Kind::Gauge,
        Unit::Count,
        "1 while the managed CrowdSec engine runs and answers; 0 otherwise.",
    ),
    (
        ENGINE_RESTARTS,
        Kind::Counter,
        Unit::Count,
        "Restarts of the managed CrowdSec engine after it died.",
    ),
    (
        ADMIN_AUTH_FAILURES,
        Kind::Counter,
        Unit::Count,
        "Admin API requests refused for a wrong token.",
    ),
    (
        CONSOLE_ENROLLMENTS,
        Kind::Counter,
        Unit::Count,
        "CrowdSec console enrollments by outcome (enrolled, already_enrolled, expired_key, invalid_key, unauthorized, unreachable, server_error, engine_config, other).",
    ),
    (
        CONSOLE_HEARTBEATS,
        Kind::Counter,
        Unit::Count,
        "Heartbeats to the CrowdSec central API by outcome (ok, failed).",
    ),
    (
        CONSOLE_HEARTBEAT_OK,
        Kind::Gauge,
        Unit::Count,
        "1 when the last heartbeat to the CrowdSec central API succeeded, else 0.",
    ),
];

/// Admin API requests refused for a wrong token.
pub const ADMIN_AUTH_FAILURES: &str = "cerberus_admin_auth_failures_total";

/// Hub preset operations by `op` (refresh, install, remove) and `outcome` (ok, or the
/// error's kind: hub_unreachable, digest_mismatch, validation_failed, ...).
pub const HUB_OPERATIONS: &str = "cerberus_hub_operations_total";

/// 1 while the managed CrowdSec engine runs and its LAPI answered, else 0.
pub const ENGINE_UP: &str = "cerberus_engine_up";
/// 1 while the managed engine runs with its central API (community blocklist), else 0.
pub const ENGINE_CAPI_ENABLED: &str = "cerberus_engine_capi_enabled";
/// Restarts of the managed CrowdSec engine after it died.
pub const ENGINE_RESTARTS: &str = "cerberus_engine_restarts_total";

/// Every name above, for tests and the exporter's descriptions.
pub const ALL: &[&str] = &[
    LAPI_REQUESTS,
    LAPI_FAILURES,
    LAPI_BYTES,
    DECISIONS_REJECTED,
    ACTIVE_DECISIONS,
    SNAPSHOT_DECISIONS,
    LAST_SYNC,
    SYNC_DURATION,
    SNAPSHOT_GENERATION,
    PERSIST_ERRORS,
    PROTECTION_ENABLED,
    LAPI_OUTAGE,
    CLOCK_JUMPS,
    SYNC_HELD,
    LOOKUPS,
    LOOKUP_DURATION,
    SOCKET_REFUSED,
    SOCKET_BAD_FRAMES,
    SOCKET_STALLED,
    HTTP_SHED,
    HTTP_TIMEOUTS,
    FORWARD_AUTH_NO_CLIENT_IP,
    USAGE_PUSHES,
    HUB_OPERATIONS,
    ADMIN_AUTH_FAILURES,
    ENGINE_UP,
    ENGINE_CAPI_ENABLED,
    ENGINE_RESTARTS,
    CONSOLE_ENROLLMENTS,
    CONSOLE_HEARTBEATS,
    CONSOLE_HEARTBEAT_OK,
];

/// Histogram buckets (seconds). A lookup takes well under a microsecond of cerberus'
/// own time on the socket and tens of microseconds through HTTP.
const LOOKUP_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
];
const SYNC_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for this process, once; later calls return the
/// first call's result. False when another recorder was installed first (some test
/// binaries count with their own): metrics then go there and [`render`] gives `None`.
pub fn install() -> bool {
    HANDLE.get_or_init(build_and_install).is_some()
}

fn build_and_install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LOOKUP_DURATION.into()), LOOKUP_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SYNC_DURATION.into()), SYNC_BUCKETS));
    let builder = match builder {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("metrics: cannot configure the Prometheus exporter: {e}");
            return None;
        }
    };
    let handle = match builder.install_recorder() {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(
                "metrics: not installing the Prometheus recorder ({e}); /metrics will be empty"
            );
            return None;
        }
    };
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
    // Histogram samples wait in a buffer until upkeep (or a render) folds them in: without
    // scrapes that buffer would grow with every lookup.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("cerberus-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!("metrics: cannot start the upkeep thread ({e}); histograms are folded in only when /metrics is scraped");
    }
    Some(handle)
}

/// The Prometheus text exposition of every metric; `None` when [`install`] did not
/// install the recorder.
pub fn render() -> Option<String> {
    HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render())
}

/// Decisions counted by label, from one snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ActiveCounts {
    /// The snapshot's generation.
    pub generation: u64,
    /// Unexpired decisions by (origin, scope, type), origin as LAPI sent it.
    pub by_labels: BTreeMap<(String, &'static str, String), u64>,
    /// Unexpired decisions by the origin that usage metrics report: `lists:<scenario>`
    /// for blocklist decisions (as CrowdSec's own bouncers do), else the origin.
    pub by_usage_origin: BTreeMap<String, u64>,
}

pub use crate::usage::usage_origin;

/// Counts the decisions of `snapshot` unexpired at unix second `now`. One pass, keyed by
/// the decision's shared metadata (a few entries however many decisions).
pub fn count_active(snapshot: &Snapshot, now: u32) -> ActiveCounts {
    // Keyed by address: the metas live in the snapshot for the whole pass.
    let mut per_meta: HashMap<*const Meta, (Meta, u64, u64), ahash::RandomState> =
        HashMap::default();
    snapshot.for_each(|target, verdict, meta| {
        if verdict.expires_at() <= now {
            return;
        }
        let e = per_meta
            .entry(meta as *const Meta)
            .or_insert_with(|| (meta.clone(), 0, 0));
        if target.is_single() {
            e.1 += 1;
        } else {
            e.2 += 1;
        }
    });
    let mut counts = ActiveCounts {
        generation: snapshot.generation(),
        ..ActiveCounts::default()
    };
    for (meta, singles, ranges) in per_meta.into_values() {
        for (scope, n) in [("Ip", singles), ("Range", ranges)] {
            if n > 0 {
                *counts
                    .by_labels
                    .entry((meta.origin.to_string(), scope, meta.type_name.to_string()))
                    .or_default() += n;
            }
        }
        *counts
            .by_usage_origin
            .entry(usage_origin(&meta.origin, &meta.scenario).into_owned())
            .or_default() += singles + ranges;
    }
    counts
}

/// Recounted when the snapshot changed, or after this long (decisions expire without a
/// new snapshot until the next purge).
const RECOUNT_AFTER: Duration = Duration::from_secs(30);

struct Cached {
    decider: u64,
    generation: u64,
    at: Instant,
    counts: Arc<ActiveCounts>,
}

static ACTIVE: Mutex<Option<Cached>> = Mutex::new(None);
/// The label sets set on the gauge last time, to zero those that disappear.
static EXPORTED: Mutex<BTreeSet<(String, &'static str, String)>> = Mutex::new(BTreeSet::new());

/// The active decisions of `decider`'s published snapshot, counted at most once per
/// snapshot generation (and at least every 30 s), so a scrape or a usage push does not
/// walk a million decisions when nothing changed.
pub fn active_counts(decider: &Decider) -> Arc<ActiveCounts> {
    let snapshot = decider.snapshot();
    let mut cache = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.as_ref() {
        if c.decider == decider.id()
            && c.generation == snapshot.generation()
            && c.at.elapsed() < RECOUNT_AFTER
        {
            return c.counts.clone();
        }
    }
    let counts = Arc::new(count_active(&snapshot, crate::clock::now_secs_precise()));
    *cache = Some(Cached {
        decider: decider.id(),
        generation: snapshot.generation(),
        at: Instant::now(),
        counts: counts.clone(),
    });
    counts
}

/// Sets the gauges read from the live state: active decisions by origin, scope and type
/// (label sets gone since the last call are set to 0), the protection switch, the
/// outage policy and the last sync time. Call right before [`render`].
pub fn observe(decider: &Decider, stats: &SyncStats) {
    let counts = active_counts(decider);
    let mut exported = EXPORTED.lock().unwrap_or_else(|e| e.into_inner());
    for gone in exported
        .iter()
        .filter(|k| !counts.by_labels.contains_key(*k))
    {
        let (origin, scope, type_name) = gone.clone();
        metrics::gauge!(ACTIVE_DECISIONS, "origin" => origin, "scope" => scope, "type" => type_name)
            .set(0.0);
    }
    exported.clear();
    for (key, &n) in &counts.by_labels {
        let (origin, scope, type_name) = key.clone();
        metrics::gauge!(ACTIVE_DECISIONS, "origin" => origin, "scope" => scope, "type" => type_name)
            .set(n as f64);
        exported.insert(key.clone());
    }
    drop(exported);
    let snapshot = decider.snapshot();
    metrics::gauge!(SNAPSHOT_DECISIONS).set(snapshot.len() as f64);
    metrics::gauge!(SNAPSHOT_GENERATION).set(snapshot.generation() as f64);
    metrics::gauge!(PROTECTION_ENABLED).set(if decider.enabled() { 1.0 } else { 0.0 });
    metrics::gauge!(LAPI_OUTAGE).set(if decider.outage().is_some() { 1.0 } else { 0.0 });
    let last = stats.last_success_ms.load(Ordering::Relaxed);
    if last > 0 {
        metrics::gauge!(LAST_SYNC).set(last as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, Target};

    #[test]
    fn every_name_is_described_once() {
        for name in ALL {
            let n = DESCRIPTIONS.iter().filter(|d| d.0 == *name).count();
            assert_eq!(n, 1, "{name} described {n} times");
        }
        assert_eq!(ALL.len(), DESCRIPTIONS.len());
        for (name, kind, _, help) in DESCRIPTIONS {
            assert!(!help.is_empty());
            assert_eq!(
                name.ends_with("_total"),
                *kind == Kind::Counter,
                "{name}: counters and only counters end in _total"
            );
        }
    }

    #[test]
    fn counts_by_origin_scope_type_and_skips_expired() {
        let decider = Decider::new();
        let mut w = decider.writer();
        let now = 1_000_000;
        let d = |id: i64, value: &str, type_name: &str, origin: &str, scenario: &str, exp: u32| {
            Decision {
                id,
                target: Target::parse(value).unwrap(),
                type_name: type_name.into(),
                origin: origin.into(),
                scenario: scenario.into(),
                expires_at: exp,
            }
        };
        w.insert(&d(1, "192.0.2.1", "ban", "crowdsec", "ssh", now + 10));
        w.insert(&d(2, "192.0.2.1", "captcha", "crowdsec", "http", now + 10));
        w.insert(&d(3, "192.0.2.2", "ban", "lists", "firehol", now + 10));
        w.insert(&d(4, "10.0.0.0/8", "ban", "lists", "firehol", now + 10));
        w.insert(&d(5, "2001:db8::/32", "ban", "cscli", "manual", now + 10));
        w.insert(&d(6, "192.0.2.3", "ban", "cscli", "manual", now));
        let snap = w.publish();
        let c = count_active(&snap, now);
        let key = |o: &str, s: &'static str, t: &str| (o.to_string(), s, t.to_string());
        let want: BTreeMap<_, _> = [
            (key("crowdsec", "Ip", "ban"), 1),
            (key("crowdsec", "Ip", "captcha"), 1),
            (key("lists", "Ip", "ban"), 1),
            (key("lists", "Range", "ban"), 1),
            (key("cscli", "Range", "ban"), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.by_labels, want);
        let want: BTreeMap<_, _> = [
            ("crowdsec".to_string(), 2),
            ("lists:firehol".to_string(), 2),
            ("cscli".to_string(), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.by_usage_origin, want);
        assert_eq!(c.generation, snap.generation());
    }
}
