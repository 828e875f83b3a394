//! Engine mode: cerberus runs the CrowdSec engine itself and follows the protection
//! switch. Switched on (or on at start, the setting being persisted), the engine is
//! started and, once its LAPI answers, the sync pulls from it with cerberus's own bouncer
//! key and the admin API writes to it with the engine agent's machine login. Switched
//! off, the sync goes idle and the engine is stopped. A dead engine is restarted by the
//! [`Supervisor`]; a start that fails is retried with a growing wait.

use super::supervisor::{EngineCreds, Supervisor};
use crate::config::Config;
use crate::lapi::watcher::Watcher;
use crate::lapi::{LapiClient, Upstream};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// The admin API's handle on the managed engine.
pub struct EngineControl {
    pub supervisor: Arc<Supervisor>,
    desired: watch::Sender<bool>,
}

impl EngineControl {
    /// Starts (true) or stops (false) the engine, in the background.
    pub fn set(&self, on: bool) {
        self.desired.send_replace(on);
    }

    pub fn wanted(&self) -> bool {
        *self.desired.borrow()
    }
}

/// The bouncer client and the watcher for the engine's LAPI.
fn upstream_for(
    config: &Config,
    sup: &Supervisor,
    creds: &EngineCreds,
) -> anyhow::Result<Upstream> {
    let mut c = config.clone();
    c.api_url = vec![creds.lapi_url.clone()];
    c.api_key = Some(creds.api_key.clone());
    c.cert_path = None;
    c.key_path = None;
    let client = LapiClient::new(&c)?;
    // The agent's machine login (created by the supervisor) is a watcher of this LAPI.
    let path = &sup.engine_config().credentials_path;
    let watcher = match std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&t).ok())
    {
        Some(v) => match (v["login"].as_str(), v["password"].as_str()) {
            (Some(login), Some(password)) => Some(Arc::new(Watcher::new(
                LapiClient::plain_http(&c)?,
                &creds.lapi_url,
                login,
                password,
            ))),
            _ => None,
        },
        None => None,
    };
    if watcher.is_none() {
        warn!(
            "no machine login in {}: unbans stay local and bans through the admin API are refused",
            path.display()
        );
    }
    Ok(Upstream {
        client: Some(client),
        watcher,
    })
}

/// Starts the engine control task; returns its handle and the task.
pub fn spawn(
    config: Arc<Config>,
    supervisor: Arc<Supervisor>,
    on: bool,
    upstream: watch::Sender<Upstream>,
    shutdown: watch::Receiver<bool>,
) -> (Arc<EngineControl>, tokio::task::JoinHandle<()>) {
    let (desired, desired_rx) = watch::channel(on);
    let control = Arc::new(EngineControl {
        supervisor: supervisor.clone(),
        desired,
    });
    let task = tokio::spawn(run(config, supervisor, desired_rx, upstream, shutdown));
    (control, task)
}

async fn run(
    config: Arc<Config>,
    sup: Arc<Supervisor>,
    mut desired: watch::Receiver<bool>,
    upstream: watch::Sender<Upstream>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut creds_rx = sup.creds();
    let mut failures = 0u32;
    loop {
        let want = *desired.borrow_and_update();
        let mut retry = None;
        if want {
            let started = tokio::select! {
                r = sup.start() => Some(r),
                _ = shutdown.changed() => None,
            };
            match started {
                None => break,
                Some(Ok(creds)) => {
                    failures = 0;
                    creds_rx.borrow_and_update();
                    match upstream_for(&config, &sup, &creds) {
                        Ok(u) => {
                            info!("the CrowdSec engine is up: syncing from {}", creds.lapi_url);
                            upstream.send_replace(u);
                        }
                        Err(e) => error!(
                            "cannot talk to the engine's LAPI at {}: {e:#}",
                            creds.lapi_url
                        ),
                    }
                }
                Some(Err(e)) => {
                    failures += 1;
                    let wait =
                        Duration::from_secs(5u64 << failures.min(4)).min(Duration::from_secs(60));
                    error!(
                        "[CROWDSEC_STARTUP] the CrowdSec engine did not start (attempt {failures}, next in {}s): {e}",
                        wait.as_secs()
                    );
                    retry = Some(wait);
                }
            }
        } else {
            upstream.send_replace(Upstream::default());
            sup.stop().await;
            info!("protection is off: the CrowdSec engine is stopped");
        }
        let again = async {
            match retry {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            r = desired.changed() => if r.is_err() { break },
            r = creds_rx.changed() => if r.is_err() { break },
            _ = again => {}
        }
    }
    upstream.send_replace(Upstream::default());
    sup.stop().await;
}
