//! Metric names in one place. Counters end in `_total`, durations in `_seconds`; no label
//! takes unbounded values (never an IP). Without an installed recorder the macros cost
//! next to nothing; the admin API installs the Prometheus exporter.

/// LAPI pulls by `kind` (startup, delta) and `outcome` (ok, error).
pub const LAPI_REQUESTS: &str = "cerberus_lapi_requests_total";
/// Failed LAPI pulls by `reason` (connect, timeout, forbidden, status_5xx, ...).
pub const LAPI_FAILURES: &str = "cerberus_lapi_failures_total";
/// Decisions not taken, by `reason` (bad_value, unsupported_scope, filtered_type, ...).
pub const DECISIONS_REJECTED: &str = "cerberus_decisions_rejected_total";
/// Decisions in the published snapshot.
pub const ACTIVE_DECISIONS: &str = "cerberus_active_decisions";
/// Unix time of the last successful pull.
pub const LAST_SYNC: &str = "cerberus_last_sync_timestamp_seconds";
/// Duration of successful pulls by `kind`.
pub const SYNC_DURATION: &str = "cerberus_sync_duration_seconds";
/// Generation of the published snapshot.
pub const SNAPSHOT_GENERATION: &str = "cerberus_snapshot_generation";
/// Writes to SQLite that failed.
pub const PERSIST_ERRORS: &str = "cerberus_persist_errors_total";

/// Lookups answered by `door` (socket, forward_auth) and `remediation` (allow, ban,
/// captcha, throttle, other).
pub const LOOKUPS: &str = "cerberus_lookups_total";
/// Time to decide and encode one lookup, by `door` (the socket's own work, not the
/// transport; forward_auth: the whole request inside cerberus).
pub const LOOKUP_DURATION: &str = "cerberus_lookup_duration_seconds";
/// Socket connections refused because `socket_max_connections` were open.
pub const SOCKET_REFUSED: &str = "cerberus_socket_connections_refused_total";
/// Malformed frames received on the socket (each closes its connection).
pub const SOCKET_BAD_FRAMES: &str = "cerberus_socket_bad_frames_total";
/// forward_auth requests answered 400 because no usable client IP was found.
pub const FORWARD_AUTH_NO_CLIENT_IP: &str = "cerberus_forward_auth_no_client_ip_total";

/// 1 while the managed CrowdSec engine runs and its LAPI answered, else 0.
pub const ENGINE_UP: &str = "cerberus_engine_up";
/// Restarts of the managed CrowdSec engine after it died.
pub const ENGINE_RESTARTS: &str = "cerberus_engine_restarts_total";

/// Every name above, for tests and the exporter's descriptions.
pub const ALL: &[&str] = &[
    LAPI_REQUESTS,
    LAPI_FAILURES,
    DECISIONS_REJECTED,
    ACTIVE_DECISIONS,
    LAST_SYNC,
    SYNC_DURATION,
    SNAPSHOT_GENERATION,
    PERSIST_ERRORS,
    LOOKUPS,
    LOOKUP_DURATION,
    SOCKET_REFUSED,
    SOCKET_BAD_FRAMES,
    FORWARD_AUTH_NO_CLIENT_IP,
    ENGINE_UP,
    ENGINE_RESTARTS,
];
