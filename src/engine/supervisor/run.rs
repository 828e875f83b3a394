//! One run of the engine, driven by the supervisor: launched (with the central-API
//! fallback when the engine cannot reach it), waited for until its LAPI answers,
//! watched and restarted with backoff when it dies, and terminated (SIGTERM to its
//! group, SIGKILL after `stop_grace`).

use super::process::{ExitInfo, Notify, Proc};
use super::{
    central_api_failed, lock, output_block, unix_now, EngineCreds, EngineError, EngineRun,
    EngineState, Inner, KEY_FILE, PID_FILE, PROGRESS_EVERY, READY_SETTLE, STABLE_RUN,
};
use crate::engine::config::{online_url, CapiPlan};
use std::io;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Waits for the engine to die, then restarts it with backoff, until cancelled.
pub(super) async fn watch_loop(inner: Arc<Inner>, mut proc: Arc<Proc>, token: CancellationToken) {
    let min = inner.settings.restart_backoff_min;
    let max = inner.settings.restart_backoff_max.max(min);
    let mut backoff = min;
    loop {
        let up_since = Instant::now();
        let exit = tokio::select! {
            e = proc.wait_exit() => e,
            _ = token.cancelled() => return,
        };
        metrics::gauge!(crate::metrics::ENGINE_UP).set(0.0);
        if up_since.elapsed() >= STABLE_RUN {
            backoff = min;
        }
        {
            let mut s = lock(&inner.status);
            s.state = EngineState::Restarting;
            s.pid = None;
            s.last_exit = Some(exit.clone());
            s.since = unix_now();
        }
        warn!(
            "the CrowdSec engine (pid {}) died: {}; restarting it in {:?}{}",
            exit.pid,
            exit.status,
            backoff,
            output_block(&exit.last_output)
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = token.cancelled() => return,
            }
            let n = {
                let mut s = lock(&inner.status);
                s.restarts += 1;
                s.restarts
            };
            metrics::counter!(crate::metrics::ENGINE_RESTARTS).increment(1);
            info!("[CROWDSEC_STARTUP] restarting the CrowdSec engine (restart {n})");
            let launched = tokio::select! {
                r = inner.launch() => r,
                _ = token.cancelled() => return,
            };
            backoff = (backoff * 2).min(max);
            match launched {
                Ok((p, creds)) => {
                    proc = p;
                    inner.running(proc.pid);
                    inner.creds.send_if_modified(|c| {
                        let changed = c.as_ref() != Some(&creds);
                        *c = Some(creds);
                        changed
                    });
                    break;
                }
                Err(e) => {
                    error!("the CrowdSec engine did not come back: {e}; next try in {backoff:?}");
                    lock(&inner.status).last_error = Some(e.to_string());
                }
            }
        }
    }
}

impl Inner {
    pub(super) fn set_state(&self, state: EngineState, error: Option<String>) {
        let mut s = lock(&self.status);
        s.state = state;
        if state != EngineState::Running {
            s.pid = None;
        }
        if error.is_some() {
            s.last_error = error;
        }
        s.since = unix_now();
    }

    pub(super) fn running(&self, pid: u32) {
        let mut s = lock(&self.status);
        s.state = EngineState::Running;
        s.pid = Some(pid);
        s.last_error = None;
        s.since = unix_now();
        metrics::gauge!(crate::metrics::ENGINE_UP).set(1.0);
    }

    pub(super) fn key_file(&self) -> PathBuf {
        self.settings.data_dir.join(KEY_FILE)
    }

    pub(super) fn pid_file(&self) -> PathBuf {
        self.settings.data_dir.join(PID_FILE)
    }

    pub(super) fn config(&self) -> &Path {
        &self.settings.config_file
    }

    /// Starts one engine process and returns it once its LAPI answers and the bouncer
    /// key is valid. On error the process is already stopped.
    pub(super) async fn launch(&self) -> Result<(Arc<Proc>, EngineCreds), EngineError> {
        self.stop_leftover().await;
        self.check_port()?;
        self.ensure_agent_credentials().await?;
        let capi = self.engine.capi_plan(self.config());
        if !capi.enabled {
            return self.launch_once(capi).await;
        }
        match self.launch_once(capi.clone()).await {
            // CrowdSec 1.5+ will not start its LAPI when the central API does not answer
            // its login at start ("api server init: unable to run local API: authenticate
            // watcher"). The engine must run anyway: once more without it.
            Err(EngineError::Exited { status, run }) if central_api_failed(&run.output) => {
                let said = run
                    .output
                    .iter()
                    .find(|l| l.contains("authenticate watcher") || l.contains("watchers/login"))
                    .map(|l| l.trim().to_string())
                    .unwrap_or_else(|| status.clone());
                warn!(
                    "[CROWDSEC_STARTUP] the engine did not start with its central API ({said}); starting it with -no-capi"
                );
                // The engine inherits cerberus's environment, so the same proxy applies.
                let why = capi
                    .credentials_path
                    .as_deref()
                    .and_then(online_url)
                    .map(|url| {
                        let from = format!(
                            "the url in {}",
                            capi.credentials_path
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .display()
                        );
                        crate::outbound::classify(&url, &said, false, &from, |k| {
                            std::env::var(k).ok()
                        })
                    });
                let off = CapiPlan {
                    enabled: false,
                    reason: Some(format!(
                        "the central API did not answer at the engine's start ({said}); the engine runs \
                         with -no-capi until its next start. Outbound HTTPS to the central API \
                         (a proxy in HTTPS_PROXY, DNS, a firewall) must work: {}",
                        why.as_ref().map(|u| u.fix.as_str()).unwrap_or("see diagnose")
                    )),
                    credentials_path: capi.credentials_path,
                    cause: why.as_ref().map(|u| u.cause),
                    fix: why.map(|u| u.fix),
                };
                self.launch_once(off).await
            }
            other => other,
        }
    }

    /// One start of the engine with (`capi.enabled`) or without (`-no-capi`) its central API.
    pub(super) async fn launch_once(
        &self,
        capi: CapiPlan,
    ) -> Result<(Arc<Proc>, EngineCreds), EngineError> {
        let mut args = vec!["-c".to_string(), self.config().display().to_string()];
        match &capi.reason {
            None => info!(
                "[CROWDSEC_STARTUP] the engine runs with its central API (community blocklist on; credentials {})",
                capi.credentials_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            Some(why) => {
                info!("[CROWDSEC_STARTUP] community blocklist off (-no-capi): {why}");
                args.push("-no-capi".to_string());
            }
        }
        metrics::gauge!(crate::metrics::ENGINE_CAPI_ENABLED).set(if capi.enabled {
            1.0
        } else {
            0.0
        });
        lock(&self.status).capi = capi;
        let started = Instant::now();
        let notify = Notify::bind();
        let proc = Proc::spawn(
            &self.settings.crowdsec_bin,
            &args,
            &self.cwd,
            notify.as_ref().map(|n| n.name.as_str()),
        )
        .map_err(|source| EngineError::Spawn {
            bin: self.settings.crowdsec_bin.clone(),
            source,
        })?;
        *lock(&self.current) = Some(proc.clone());
        lock(&self.status).pid = Some(proc.pid);
        self.write_pid_file(proc.pid);
        info!(
            "[CROWDSEC_STARTUP] started the CrowdSec engine (pid {}): {} {}; waiting for its LAPI at {}",
            proc.pid,
            self.settings.crowdsec_bin.display(),
            args.join(" "),
            self.engine.lapi_url
        );
        let ready = async {
            self.wait_ready(&proc, notify.as_ref(), started).await?;
            let key = self.ensure_bouncer_key().await?;
            if let Some(exit) = proc.exited() {
                return Err(self.exited_error(&exit));
            }
            Ok(key)
        };
        match ready.await {
            Ok(api_key) => {
                info!(
                    "[CROWDSEC_STARTUP] the CrowdSec engine is up at {} (pid {}, ready in {} ms)",
                    self.engine.lapi_url,
                    proc.pid,
                    started.elapsed().as_millis()
                );
                Ok((
                    proc,
                    EngineCreds {
                        lapi_url: self.engine.lapi_url.clone(),
                        api_key,
                    },
                ))
            }
            Err(e) => {
                self.terminate(&proc).await;
                lock(&self.current).take();
                Err(e)
            }
        }
    }

    pub(super) fn exited_error(&self, exit: &ExitInfo) -> EngineError {
        EngineError::Exited {
            status: exit.status.clone(),
            run: self.run_info(exit.last_output.clone()),
        }
    }

    pub(super) fn run_info(&self, output: Vec<String>) -> Box<EngineRun> {
        Box::new(EngineRun {
            bin: self.settings.crowdsec_bin.clone(),
            config: self.config().to_path_buf(),
            output,
            log_file: self.engine.log_file.clone(),
        })
    }

    /// Waits until the LAPI answers `GET /health` and, when the config says
    /// `daemonize: true`, the engine has sent `READY=1` (sd_notify): CrowdSec 1.4 installs
    /// its SIGTERM/SIGHUP handlers only then, about a second after its LAPI is up, and a
    /// signal before that kills it. Without a READY by the deadline, a healthy LAPI is
    /// taken as ready (with a warning).
    pub(super) async fn wait_ready(
        &self,
        proc: &Proc,
        notify: Option<&Notify>,
        started: Instant,
    ) -> Result<(), EngineError> {
        let timeout = self.settings.health_timeout;
        let deadline = started + timeout;
        let mut next_progress = started + PROGRESS_EVERY;
        let url = format!("{}/health", self.engine.lapi_url);
        let want_ready = self.engine.daemonize && notify.is_some();
        let mut notified = false;
        let mut healthy = false;
        loop {
            notified = notified || notify.is_some_and(Notify::ready);
            if !healthy {
                let probe = async {
                    matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
                };
                tokio::select! {
                    up = probe => healthy = up,
                    exit = proc.wait_exit() => return Err(self.exited_error(&exit)),
                }
            }
            if let Some(exit) = proc.exited() {
                return Err(self.exited_error(&exit));
            }
            if healthy && (notified || !want_ready) {
                if notified {
                    tokio::select! {
                        _ = tokio::time::sleep(READY_SETTLE) => {}
                        exit = proc.wait_exit() => return Err(self.exited_error(&exit)),
                    }
                }
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                if healthy {
                    warn!(
                        "the CrowdSec engine's LAPI answers but the engine sent no READY=1 \
                         (sd_notify) within {}s; going on (it may not handle SIGTERM/SIGHUP yet)",
                        timeout.as_secs()
                    );
                    return Ok(());
                }
                return Err(EngineError::Unhealthy {
                    url: self.engine.lapi_url.clone(),
                    timeout,
                    run: self.run_info(proc.last_output()),
                });
            }
            if now >= next_progress {
                let what = if healthy {
                    " (LAPI up, agent loading)"
                } else {
                    ""
                };
                info!(
                    "[CROWDSEC_STARTUP] waiting for the CrowdSec engine at {} ({}s/{}s){what}",
                    self.engine.lapi_url,
                    (now - started).as_secs(),
                    timeout.as_secs()
                );
                next_progress += PROGRESS_EVERY;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                exit = proc.wait_exit() => return Err(self.exited_error(&exit)),
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period; returns once it exited.
    pub(super) async fn terminate(&self, proc: &Proc) {
        if proc.exited().is_some() {
            return;
        }
        let grace = self.settings.stop_grace;
        info!(
            "stopping the CrowdSec engine (pid {}): SIGTERM to its process group, SIGKILL after {grace:?}",
            proc.pid
        );
        proc.signal_group(libc::SIGTERM);
        if tokio::time::timeout(grace, proc.wait_exit()).await.is_ok() {
            return;
        }
        warn!(
            "the CrowdSec engine (pid {}) did not stop within {grace:?} of SIGTERM; sending SIGKILL to its process group",
            proc.pid
        );
        proc.signal_group(libc::SIGKILL);
        if tokio::time::timeout(Duration::from_secs(10), proc.wait_exit())
            .await
            .is_err()
        {
            error!(
                "the CrowdSec engine (pid {}) still runs 10s after SIGKILL (stuck in the kernel?)",
                proc.pid
            );
        }
    }

    /// Fails early, with a clear message, when another process holds the LAPI's port.
    pub(super) fn check_port(&self) -> Result<(), EngineError> {
        let addr = self
            .engine
            .listen_uri
            .strip_prefix("http://")
            .unwrap_or(&self.engine.listen_uri)
            .trim_end_matches('/');
        let Ok(addrs) = addr.to_socket_addrs() else {
            return Ok(()); // the engine reports names it cannot resolve itself
        };
        for a in addrs {
            if let Err(e) = std::net::TcpListener::bind(a) {
                if e.kind() == io::ErrorKind::AddrInUse {
                    return Err(EngineError::PortInUse {
                        addr: addr.to_string(),
                        config: self.config().to_path_buf(),
                    });
                }
            }
        }
        Ok(())
    }
}
