//! The heartbeat: the central-API client that checks the engine's standing, and the
//! poller.
//!
//! The heartbeat checks the engine's standing with the central API the way the engine's
//! API client does: log in with the online credentials (`POST {url}v2/watchers/login`,
//! with the scenarios installed in the engine's config dir) and call
//! `GET {url}v2/heartbeat` with the token (`apiclient.HeartBeat.Ping` under the
//! prefix that the engine uses for the central API: `v2` up to 1.4, `v3` from 1.5 on,
//! `pkg/apiserver/apic.go` of 1.7.8; read once from `cscli version`). The poller does it at start and
//! then every `heartbeat_interval`.

use super::{bounded, now_rfc3339, read_engine, Console, Engine, Heartbeat, HTTP_TIMEOUT};
use crate::outbound::Unreachable;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

/// Why a heartbeat failed: the central API not reached (classified), or anything else.
enum HeartbeatError {
    Unreachable(Unreachable),
    Other(String),
}

impl From<String> for HeartbeatError {
    fn from(e: String) -> HeartbeatError {
        HeartbeatError::Other(e)
    }
}

impl Console {
    /// One heartbeat now: logs its outcome, keeps it as the last one, and answers it.
    pub async fn heartbeat(&self) -> Heartbeat {
        self.heartbeat_inner().instrument(self.span()).await
    }

    async fn heartbeat_inner(&self) -> Heartbeat {
        let started = Instant::now();
        let result = self.try_heartbeat().await;
        let (error, cause) = match result {
            Ok(()) => (None, None),
            Err(HeartbeatError::Unreachable(u)) => (Some(u.message()), Some(u.cause)),
            Err(HeartbeatError::Other(e)) => (Some(e), None),
        };
        let hb = Heartbeat {
            ok: error.is_none(),
            at: now_rfc3339(),
            latency_ms: started.elapsed().as_millis() as u64,
            error,
            cause,
        };
        match &hb.error {
            None => {
                metrics::counter!(crate::metrics::CONSOLE_HEARTBEATS, "outcome" => "ok")
                    .increment(1);
                info!(
                    latency_ms = hb.latency_ms,
                    "[HEARTBEAT_POLLER] heartbeat sent successfully"
                );
            }
            Some(e) => {
                metrics::counter!(crate::metrics::CONSOLE_HEARTBEATS, "outcome" => "failed")
                    .increment(1);
                warn!("[HEARTBEAT_POLLER] heartbeat failed: {e}");
            }
        }
        metrics::gauge!(crate::metrics::CONSOLE_HEARTBEAT_OK).set(if hb.ok { 1.0 } else { 0.0 });
        let kept = hb.clone();
        self.update(|s| s.last_heartbeat = Some(kept));
        hb
    }

    /// `v2` (CrowdSec 1.4) or `v3` (1.5 and later, and when `cscli version` says nothing
    /// usable): the central API version the engine speaks, read once.
    async fn api_version(&self) -> &'static str {
        self.api_version
            .get_or_init(|| async {
                let out = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::process::Command::new(&self.settings.cscli_bin)
                        .arg("version")
                        .stdin(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .output(),
                )
                .await;
                let text = match out {
                    Ok(Ok(o)) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    _ => String::new(),
                };
                capi_version_of(&text)
            })
            .await
    }

    async fn try_heartbeat(&self) -> Result<(), HeartbeatError> {
        let engine = read_engine(&self.settings.engine_config).map_err(HeartbeatError::Other)?;
        let v = self.api_version().await;
        let unreachable = |e: reqwest::Error| {
            let why = if e.is_timeout() {
                format!("no answer within {}s", HTTP_TIMEOUT.as_secs())
            } else {
                crate::lapi::root_cause(&e)
            };
            HeartbeatError::Unreachable(unreachable_of(&engine, &why, e.is_timeout(), |k| {
                std::env::var(k).ok()
            }))
        };
        let login = self
            .http
            .post(format!("{}{v}/watchers/login", engine.url))
            .json(&json!({
                "machine_id": engine.login,
                "password": engine.password,
                "scenarios": engine.scenarios,
            }))
            .send()
            .await
            .map_err(unreachable)?;
        let status = login.status().as_u16();
        let body = login.text().await.map_err(unreachable)?;
        if status == 401 || status == 403 {
            return Err(format!(
                "the central API refused the engine's login (HTTP {status}: {}); the online credentials in {} are wrong or revoked: run `cscli capi register` on the engine and restart it",
                api_message(&body),
                engine.credentials_path.display()
            )
            .into());
        }
        if !(200..300).contains(&status) {
            return Err(format!(
                "the central API answered the login with HTTP {status}: {}",
                api_message(&body)
            )
            .into());
        }
        let token = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("token")?.as_str().map(str::to_string))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                HeartbeatError::from("the central API's login answer has no token".to_string())
            })?;
        let resp = self
            .http
            .get(format!("{}{v}/heartbeat", engine.url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(format!(
            "GET {}{v}/heartbeat answered HTTP {status}: {}",
            engine.url,
            api_message(&body)
        )
        .into())
    }

    /// A heartbeat at start, then every `heartbeat_interval`, until `shutdown`.
    pub async fn run_poller(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let interval = self.settings.heartbeat_interval;
        let span = self.span();
        /// Clears `poller_alive` however the poller ends.
        struct Alive<'a>(&'a AtomicBool);
        impl Drop for Alive<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        async move {
            if interval.is_zero() {
                info!("[HEARTBEAT_POLLER] off (heartbeat_interval is 0s)");
                return;
            }
            info!(
                "[HEARTBEAT_POLLER] checking the engine's standing with the central API every {}",
                humantime::format_duration(interval)
            );
            self.poller_alive.store(true, Ordering::Release);
            let _alive = Alive(&self.poller_alive);
            loop {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    _ = self.heartbeat_inner() => {}
                    _ = shutdown.changed() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Why the central API could not be reached, classified with its fix
/// ([`crate::outbound::classify`]); the DNS fix names the engine's credentials file.
pub(super) fn unreachable_of(
    engine: &Engine,
    why: &str,
    timed_out: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Unreachable {
    let from = format!("the url in {}", engine.credentials_path.display());
    crate::outbound::classify(&engine.url, why, timed_out, &from, env)
}

/// The central API version of a cscli whose `cscli version` printed `text`
/// (`version: v1.4.6-debian...`): `v2` before 1.5, else `v3`.
pub(super) fn capi_version_of(text: &str) -> &'static str {
    let minor = text.lines().find_map(|l| {
        // 1.4.6 puts a date first: `2026/12/01 21:30:08 version: v1.4.6-6~deb12u1+b1-debian`.
        let at = l.find("version: v1.")? + "version: v1.".len();
        let v = &l[at..];
        v.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u32>()
            .ok()
    });
    match minor {
        Some(m) if m < 5 => "v2",
        _ => "v3",
    }
}

/// The `message` of a central API error body, else the start of the body.
fn api_message(body: &str) -> String {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let msg = if msg.is_empty() {
        "(empty body)".to_string()
    } else {
        msg
    };
    bounded(&msg)
}
