//! The usage-metrics pusher: sends what the doors counted (read from the leaf
//! [`crate::usage`], through the decider) to LAPI as `POST /v1/usage-metrics` (CrowdSec
//! 1.6.3 and later show them in `cscli metrics` and the console).
//!
//! [`run`] sends, every `usage_metrics_interval`, the differences since the last
//! accepted push, so a push that fails is carried by the next one.
//!
//! LAPI before 1.6.3 (Debian's 1.4.6) has no such route and answers 404: that is logged
//! once at info level and counted (`outcome="not_found"`); cerberus keeps trying quietly
//! at the same interval (so an upgraded LAPI gets metrics without a restart) and drops
//! the counts of such windows instead of piling them up.

use super::LapiClient;
use crate::clock;
use crate::store::Decider;
use crate::usage::Totals;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// `name` of the component in the pushed metrics.
pub const COMPONENT_NAME: &str = "cerberus";
/// `type` of the component in the pushed metrics.
pub const COMPONENT_TYPE: &str = "crowdsec-caddy-bouncer";

/// The OS name and version from `/etc/os-release` (`ID`, `VERSION_ID`), else `linux` and
/// the kernel release.
pub fn os_info() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
            .filter(|v| !v.is_empty())
    };
    let name = field("ID").unwrap_or_else(|| std::env::consts::OS.to_string());
    let version = field("VERSION_ID").unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    });
    (name, version)
}

/// The body of one push: counters as differences from `sent`, active decisions as they
/// are now.
pub fn body(
    now: &Totals,
    sent: &Totals,
    active_by_origin: &BTreeMap<String, u64>,
    startup_ts: u64,
    window_secs: u64,
    now_ts: u64,
    os: &(String, String),
) -> Value {
    let mut items = vec![json!({
        "name": "processed",
        "value": now.processed.saturating_sub(sent.processed),
        "unit": "request",
    })];
    for ((origin, remediation), &n) in &now.dropped {
        let before = sent
            .dropped
            .get(&(origin.clone(), remediation.clone()))
            .copied()
            .unwrap_or(0);
        let diff = n.saturating_sub(before);
        if diff > 0 {
            items.push(json!({
                "name": "dropped",
                "value": diff,
                "unit": "request",
                "labels": {"origin": origin, "remediation": remediation},
            }));
        }
    }
    for (origin, &n) in active_by_origin {
        items.push(json!({
            "name": "active_decisions",
            "value": n,
            "unit": "ip",
            "labels": {"origin": origin},
        }));
    }
    json!({
        "remediation_components": [{
            "name": COMPONENT_NAME,
            "type": COMPONENT_TYPE,
            "version": env!("CARGO_PKG_VERSION"),
            "utc_startup_timestamp": startup_ts,
            "feature_flags": [],
            "os": {"name": os.0, "version": os.1},
            "metrics": [{
                "meta": {
                    "window_size_seconds": window_secs.max(1),
                    "utc_now_timestamp": now_ts,
                },
                "items": items,
            }],
        }]
    })
}

/// How one push ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Connect,
    Timeout,
    Status4xx,
    Status5xx,
    Other,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Connect => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Status4xx => "status_4xx",
            Outcome::Status5xx => "status_5xx",
            Outcome::Other => "other",
        }
    }
}

/// Sends usage metrics to one LAPI; keeps what was last accepted.
pub struct Pusher {
    client: LapiClient,
    decider: Arc<Decider>,
    os: (String, String),
    startup_ts: u64,
    /// Totals at the last accepted (or 404-dropped) push, and when it was.
    sent: Totals,
    sent_ts: u64,
    not_found_logged: bool,
}

fn now_ts() -> u64 {
    (clock::now_ms().max(0) / 1000) as u64
}

impl Pusher {
    /// Counts from now: the startup time reported is this call's.
    pub fn new(client: LapiClient, decider: Arc<Decider>) -> Pusher {
        let ts = now_ts();
        Pusher {
            client,
            decider,
            os: os_info(),
            startup_ts: ts,
            sent: Totals::default(),
            sent_ts: ts,
            not_found_logged: false,
        }
    }

    /// One push; returns how it ended (already logged and counted).
    pub async fn push_once(&mut self) -> Outcome {
        let totals = self.decider.usage().totals();
        let active = crate::metrics::active_counts(&self.decider);
        let now = now_ts();
        let body = body(
            &totals,
            &self.sent,
            &active.by_usage_origin,
            self.startup_ts,
            now.saturating_sub(self.sent_ts),
            now,
            &self.os,
        );
        let url = format!("{}/v1/usage-metrics", self.client.url());
        let sent = self
            .client
            .http()
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let outcome = match sent {
            Ok(resp) if resp.status().is_success() => {
                if self.not_found_logged {
                    info!("LAPI accepts usage metrics now; sending them every interval");
                    self.not_found_logged = false;
                }
                debug!(
                    "usage metrics sent to LAPI ({} requests processed in the window)",
                    totals.processed.saturating_sub(self.sent.processed)
                );
                Outcome::Ok
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                if !self.not_found_logged {
                    info!(
                        "LAPI at {} does not accept usage metrics (HTTP 404 on /v1/usage-metrics; CrowdSec before 1.6.3); \
                         trying again quietly every interval, set usage_metrics_interval: 0s to stop",
                        self.client.url()
                    );
                    self.not_found_logged = true;
                }
                Outcome::NotFound
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let snippet = bouncer_api::truncate_utf8(text.trim(), 200);
                let said = if snippet.is_empty() {
                    String::new()
                } else {
                    format!(" ({snippet})")
                };
                warn!("usage metrics push to {url} failed: HTTP {status}{said}; the counts go with the next push");
                if status.is_server_error() {
                    Outcome::Status5xx
                } else {
                    Outcome::Status4xx
                }
            }
            Err(e) => {
                let outcome = if e.is_timeout() {
                    Outcome::Timeout
                } else if e.is_connect() {
                    Outcome::Connect
                } else {
                    Outcome::Other
                };
                warn!(
                    "usage metrics push to {url} failed ({}): {}; the counts go with the next push",
                    outcome.as_str(),
                    root_cause(&e)
                );
                outcome
            }
        };
        if matches!(outcome, Outcome::Ok | Outcome::NotFound) {
            self.sent = totals;
            self.sent_ts = now;
        }
        metrics::counter!(crate::metrics::USAGE_PUSHES, "outcome" => outcome.as_str()).increment(1);
        outcome
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Pushes every `interval` until `shutdown` turns true (the first push after one
/// interval).
pub async fn run(
    client: LapiClient,
    decider: Arc<Decider>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pusher = Pusher::new(client, decider);
    info!(
        "sending usage metrics to LAPI every {}",
        humantime::format_duration(interval)
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
        tokio::select! {
            _ = pusher.push_once() => {}
            _ = shutdown.changed() => break,
        }
    }
    debug!("usage metrics loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_differences() {
        let mut sent = Totals {
            processed: 10,
            ..Totals::default()
        };
        sent.dropped.insert(("cscli".into(), "ban".into()), 4);
        let mut now = sent.clone();
        now.processed = 15;
        now.dropped.insert(("cscli".into(), "ban".into()), 6);
        now.dropped.insert(("crowdsec".into(), "captcha".into()), 1);
        let active = [("cscli".to_string(), 7u64)].into_iter().collect();
        let os = ("debian".to_string(), "12".to_string());
        let b = body(&now, &sent, &active, 100, 60, 160, &os);
        let items = &b["remediation_components"][0]["metrics"][0]["items"];
        assert_eq!(
            items,
            &json!([
                {"name": "processed", "value": 5, "unit": "request"},
                {"name": "dropped", "value": 1, "unit": "request",
                 "labels": {"origin": "crowdsec", "remediation": "captcha"}},
                {"name": "dropped", "value": 2, "unit": "request",
                 "labels": {"origin": "cscli", "remediation": "ban"}},
                {"name": "active_decisions", "value": 7, "unit": "ip",
                 "labels": {"origin": "cscli"}},
            ])
        );
        let meta = &b["remediation_components"][0]["metrics"][0]["meta"];
        assert_eq!(meta["window_size_seconds"], 60);
        assert_eq!(meta["utc_now_timestamp"], 160);
    }
}
