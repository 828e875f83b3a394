//! What the CrowdSec console shows for the engine, read from the heartbeats: whether the
//! poller still runs (a heartbeat at least every two intervals) and whether the console
//! sees the engine online, each with why and what to fix.

use super::Heartbeat;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// The heartbeat poller and the console's view of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// `running`, `not_running` (no heartbeat for more than two intervals, or never) or
    /// `off` (`heartbeat_interval: 0s`).
    pub poller: &'static str,
    /// `online`, `offline`, `unknown` (no heartbeat yet) or `not_enrolled`.
    pub console: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

const SEND_NOW: &str = "POST /api/v1/cerberus/crowdsec/console/heartbeat";

/// `last`: the last heartbeat; `since`: when this cerberus started (a poller that never
/// sent one is late counted from there); `alive`: whether the poller task still runs.
pub fn standing(
    last: Option<&Heartbeat>,
    now: SystemTime,
    since: SystemTime,
    interval: Duration,
    enrolled: bool,
    alive: bool,
) -> Standing {
    let last_at = last.and_then(|h| humantime::parse_rfc3339(&h.at).ok());
    let age = now
        .duration_since(last_at.unwrap_or(since))
        .unwrap_or_default();
    let late = !interval.is_zero() && age > interval * 2;
    let every = humantime::format_duration(interval).to_string();
    let why_stopped = if alive {
        "the poller task runs but its heartbeat has not finished (look for [HEARTBEAT_POLLER] in the log)"
    } else {
        "the poller task has ended (look for [HEARTBEAT_POLLER] and errors in the log)"
    };
    let poller = if interval.is_zero() {
        "off"
    } else if late && (last.is_some() || enrolled) {
        "not_running"
    } else {
        "running"
    };
    let not_running = match last_at {
        Some(_) if poller == "not_running" => Some(format!(
            "the heartbeat poller has sent no heartbeat since {} (more than two intervals of {every}): {why_stopped}",
            last.map(|h| h.at.as_str()).unwrap_or("")
        )),
        None if poller == "not_running" => Some(format!(
            "the heartbeat poller has sent no heartbeat in the {} since cerberus started (every {every} expected): {why_stopped}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        )),
        _ => None,
    };
    let restart = format!("restart cerberus (`systemctl restart cerberus`) to restart the poller, or {SEND_NOW} to check at once");
    if !enrolled {
        return Standing {
            poller,
            console: "not_enrolled",
            detail: not_running.unwrap_or_else(|| {
                "the engine is not enrolled, so the console does not list it".into()
            }),
            fix: Some("enroll it: POST /api/v1/cerberus/crowdsec/console/enroll".into()),
        };
    }
    if let Some(why) = not_running {
        return Standing {
            poller,
            console: "offline",
            detail: format!("the CrowdSec console shows this engine offline: {why}"),
            fix: Some(restart),
        };
    }
    match last {
        Some(h) if h.ok => Standing {
            poller,
            console: "online",
            detail: format!("the central API accepted the heartbeat at {}", h.at),
            fix: None,
        },
        Some(h) => Standing {
            poller,
            console: "offline",
            detail: format!(
                "the CrowdSec console shows this engine offline: the last heartbeat ({}) failed: {}",
                h.at,
                h.error.as_deref().unwrap_or("unknown error")
            ),
            fix: Some(format!(
                "fix what the error names (the engine reaches the central API the same way), then {SEND_NOW}"
            )),
        },
        None if interval.is_zero() => Standing {
            poller,
            console: "unknown",
            detail: "no heartbeat yet and the poller is off (heartbeat_interval: 0s)".into(),
            fix: Some(format!("{SEND_NOW} to check the engine's standing now, or set heartbeat_interval")),
        },
        None => Standing {
            poller,
            console: "unknown",
            detail: "no heartbeat has finished yet (the poller sends one at start)".into(),
            fix: Some(format!("wait a few seconds, or {SEND_NOW}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(ok: bool, at: &str) -> Heartbeat {
        Heartbeat {
            ok,
            at: at.into(),
            latency_ms: 3,
            error: (!ok).then(|| "the central API at https://api.crowdsec.net/ is unreachable (connection refused); outbound TCP to api.crowdsec.net:443 must be open".into()),
            cause: None,
        }
    }

    fn t(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    const MIN5: Duration = Duration::from_secs(300);

    #[test]
    fn a_heartbeat_older_than_two_intervals_means_the_poller_is_not_running() {
        let last = hb(true, "2026-12-01T10:00:00Z");
        let start = t("2026-12-01T09:00:00Z");
        // Within two intervals: running, online.
        let s = standing(
            Some(&last),
            t("2026-12-01T10:09:00Z"),
            start,
            MIN5,
            true,
            true,
        );
        assert_eq!((s.poller, s.console), ("running", "online"), "{s:?}");
        // Past two intervals: not running, offline, with why and the fix.
        let s = standing(
            Some(&last),
            t("2026-12-01T10:11:00Z"),
            start,
            MIN5,
            true,
            false,
        );
        assert_eq!((s.poller, s.console), ("not_running", "offline"), "{s:?}");
        assert!(
            s.detail.contains("shows this engine offline")
                && s.detail.contains("no heartbeat since 2026-12-01T10:00:00Z")
                && s.detail.contains("the poller task has ended"),
            "{s:?}"
        );
        assert!(s.fix.unwrap().contains("restart cerberus"));
        // Never sent, enrolled, started long ago.
        let s = standing(
            None,
            t("2026-12-01T10:11:00Z"),
            t("2026-12-01T10:00:00Z"),
            MIN5,
            true,
            true,
        );
        assert_eq!(s.poller, "not_running", "{s:?}");
        assert!(
            s.detail.contains("since cerberus started") && s.detail.contains("has not finished"),
            "{s:?}"
        );
        // Never sent, just started: not late yet.
        let s = standing(
            None,
            t("2026-12-01T10:01:00Z"),
            t("2026-12-01T10:00:00Z"),
            MIN5,
            true,
            true,
        );
        assert_eq!((s.poller, s.console), ("running", "unknown"), "{s:?}");
        // The poller off.
        let s = standing(
            None,
            t("2026-12-01T10:11:00Z"),
            start,
            Duration::ZERO,
            true,
            false,
        );
        assert_eq!((s.poller, s.console), ("off", "unknown"), "{s:?}");
    }

    #[test]
    fn a_failed_heartbeat_means_the_console_shows_the_engine_offline() {
        let last = hb(false, "2026-12-01T10:00:00Z");
        let s = standing(
            Some(&last),
            t("2026-12-01T10:01:00Z"),
            t("2026-12-01T09:00:00Z"),
            MIN5,
            true,
            true,
        );
        assert_eq!((s.poller, s.console), ("running", "offline"), "{s:?}");
        assert!(
            s.detail.contains("shows this engine offline")
                && s.detail
                    .contains("outbound TCP to api.crowdsec.net:443 must be open"),
            "{s:?}"
        );
        assert!(s.fix.unwrap().contains("console/heartbeat"));
        // Not enrolled: not listed at all, and the fix is to enroll.
        let s = standing(
            Some(&last),
            t("2026-12-01T10:01:00Z"),
            t("2026-12-01T09:00:00Z"),
            MIN5,
            false,
            true,
        );
        assert_eq!(s.console, "not_enrolled");
        assert!(s.fix.unwrap().contains("console/enroll"));
    }
}
