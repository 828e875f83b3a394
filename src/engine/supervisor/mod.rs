//! The managed CrowdSec engine's supervision: cerberus runs `crowdsec -c CONFIG` (agent and
//! LAPI in one process), waits for its LAPI, gives itself a bouncer key, restarts the
//! engine when it dies and stops it with cerberus.
//!
//! - The engine runs in a process group of its own. Stop: SIGTERM to the group, SIGKILL
//!   after `stop_grace`. When the engine's main process exits, whatever is left of its
//!   group (notification plugins, say) is killed before its pid is reaped, so nothing of
//!   it outlives it.
//! - Orphans: the engine gets `PR_SET_PDEATHSIG = SIGTERM`, tied to a thread that lives
//!   exactly as long as the engine, so it is told to stop when cerberus dies, however it
//!   dies. Its pid is also kept in `data_dir/engine.pid`: a start finds an engine of an
//!   earlier run that is still there (one that ignored that SIGTERM) and stops it first.
//! - The LAPI URL comes from the engine config's `api.server.listen_uri`; the bouncer key
//!   is kept in `data_dir/engine_bouncer_key` (mode 0600), checked on every start against
//!   `cscli bouncers list -o json` (name, SHA-512 of the key, not revoked), and replaced
//!   when the LAPI no longer knows it. The agent's own machine credentials
//!   (`api.client.credentials_path`) are created with cscli when that file is missing.
//! - CrowdSec 1.4 handles SIGHUP (reload) and SIGTERM (clean shutdown) only when the
//!   config says `common.daemonize: true` (which does not fork); with `false`, both signals
//!   kill it at once. [`Supervisor::reload`] restarts the engine in that case.
//!
//! The parts: [`crate::engine::config`] reads the engine config, [`process`] runs one
//! engine process (and finds one left by an earlier run), [`credentials`] gives the
//! bouncer side its key and the agent its machine credentials, [`run`] launches one run
//! and watches it (wait for the LAPI, restart with backoff, terminate); this file holds
//! the [`Supervisor`] and its state (start, reload, stop, status).

mod credentials;
mod process;
mod run;

pub use crate::engine::config::{read_engine_config, resolve_binary, CapiPlan, EngineConfigInfo};
pub use process::ExitInfo;
use process::{describe_status, Proc};
use run::watch_loop;

use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The bouncer (and agent machine) name cerberus registers in the engine's LAPI.
pub const DEFAULT_BOUNCER_NAME: &str = "cerberus-managed";
/// File in `data_dir` holding the engine bouncer key.
pub const KEY_FILE: &str = "engine_bouncer_key";
/// File in `data_dir` holding the pid of the running engine.
pub const PID_FILE: &str = "engine.pid";
/// Lines of the engine's stdout/stderr kept for error messages.
const OUTPUT_LINES: usize = 40;
/// Lines of output shown in a message.
const SHOWN_LINES: usize = 15;
/// How often the LAPI wait logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Limit for one cscli run.
const CSCLI_TIMEOUT: Duration = Duration::from_secs(60);
/// CrowdSec 1.4 sends READY=1 a few instructions before it installs its signal
/// handlers; a signal in between kills it. This much is left to it after READY.
const READY_SETTLE: Duration = Duration::from_millis(300);
/// An engine that ran this long before dying is restarted after the shortest backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// True when an engine's last output says it stopped because its central API failed.
fn central_api_failed(output: &[String]) -> bool {
    output.iter().any(|l| {
        l.contains("authenticate watcher")
            || (l.contains("unable to run local API") && l.contains("watchers/login"))
    })
}

/// What can go wrong; every message names the file or command concerned.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} {path}: {reason}")]
    Binary {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("engine config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: PathBuf, source: io::Error },
    #[error("the CrowdSec engine ({run}) exited during start: {status}{}{}", output_block(&.run.output), log_hint(&.run.log_file))]
    Exited { status: String, run: Box<EngineRun> },
    #[error("the CrowdSec engine ({run}) did not answer GET {url}/health within {}s{}{}", .timeout.as_secs(), output_block(&.run.output), log_hint(&.run.log_file))]
    Unhealthy {
        url: String,
        timeout: Duration,
        run: Box<EngineRun>,
    },
    #[error("{addr} (api.server.listen_uri in {config}) is already in use by another process; stop it or give the engine another port")]
    PortInUse { addr: String, config: PathBuf },
    #[error("`cscli -c {config} {args}` failed: {status}{}", output_block(.output))]
    Cscli {
        config: PathBuf,
        args: String,
        status: String,
        output: Vec<String>,
    },
    #[error("engine bouncer key {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("the CrowdSec engine is not running")]
    NotRunning,
    #[error("the CrowdSec engine start was cancelled by a stop")]
    Cancelled,
}

/// Which engine failed to start, and what it printed.
#[derive(Debug, Clone)]
pub struct EngineRun {
    pub bin: PathBuf,
    pub config: PathBuf,
    /// Its last stdout/stderr lines.
    pub output: Vec<String>,
    /// The engine's own log file, when it writes one.
    pub log_file: Option<PathBuf>,
}

impl std::fmt::Display for EngineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -c {}", self.bin.display(), self.config.display())
    }
}

fn output_block(lines: &[String]) -> String {
    if lines.is_empty() {
        return "; it printed nothing".into();
    }
    let mut s = String::from("; its last output lines:");
    for line in lines.iter().skip(lines.len().saturating_sub(SHOWN_LINES)) {
        s.push_str("\n  ");
        s.push_str(line);
    }
    s
}

fn log_hint(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("\n(the engine's own log: {})", f.display()),
        None => String::new(),
    }
}

/// How to run the engine. [`EngineSettings::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// `crowdsec` binary: a path, or a bare name looked up in `PATH`.
    pub crowdsec_bin: PathBuf,
    /// `cscli` binary: a path, or a bare name looked up in `PATH`.
    pub cscli_bin: PathBuf,
    /// The engine's config file (`crowdsec -c`).
    pub config_file: PathBuf,
    /// cerberus' `data_dir`: holds the bouncer key and the pid file.
    pub data_dir: PathBuf,
    /// Wait between SIGTERM and SIGKILL. Default 10s.
    pub stop_grace: Duration,
    /// Wait for the LAPI's `GET /health` at each (re)start. Default 60s.
    pub health_timeout: Duration,
    /// Name of the bouncer and of the agent's machine. Default `cerberus-managed`.
    pub bouncer_name: String,
    /// First wait before a restart after a death, doubled per quick death. Default 1s.
    pub restart_backoff_min: Duration,
    /// Longest wait before a restart. Default 60s.
    pub restart_backoff_max: Duration,
}

impl EngineSettings {
    pub fn new(
        crowdsec_bin: impl Into<PathBuf>,
        cscli_bin: impl Into<PathBuf>,
        config_file: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> EngineSettings {
        EngineSettings {
            crowdsec_bin: crowdsec_bin.into(),
            cscli_bin: cscli_bin.into(),
            config_file: config_file.into(),
            data_dir: data_dir.into(),
            stop_grace: Duration::from_secs(10),
            health_timeout: Duration::from_secs(60),
            bouncer_name: DEFAULT_BOUNCER_NAME.into(),
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
        }
    }

    /// From the `engine` section of the cerberus config and its `data_dir`.
    pub fn from_config(config: &crate::config::Config) -> EngineSettings {
        let e = &config.engine;
        let mut s = EngineSettings::new(
            &e.crowdsec_bin,
            &e.cscli_bin,
            &e.config_file,
            &config.data_dir,
        );
        s.stop_grace = e.stop_grace;
        s
    }
}

/// Where the bouncer side reaches the engine's LAPI, and with which key.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct EngineCreds {
    /// `http://HOST:PORT`, no trailing slash.
    pub lapi_url: String,
    #[serde(skip_serializing)]
    pub api_key: String,
}

/// Never prints the key.
impl std::fmt::Debug for EngineCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCreds")
            .field("lapi_url", &self.lapi_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// Where the supervisor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    Stopped,
    Starting,
    Running,
    /// Died; waiting out the backoff or starting again.
    Restarting,
    /// The last start failed (see `last_error`).
    Failed,
}

/// A snapshot of the supervisor's state (JSON for the admin API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    pub state: EngineState,
    pub pid: Option<u32>,
    /// Restarts after the engine died, since this supervisor was made.
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
    pub last_error: Option<String>,
    /// Unix time (seconds) of the last state change.
    pub since: u64,
    pub lapi_url: String,
    /// The central API (community blocklist): on or off and why, as of the last start.
    pub capi: CapiPlan,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct StatusState {
    state: EngineState,
    pid: Option<u32>,
    restarts: u64,
    last_exit: Option<ExitInfo>,
    last_error: Option<String>,
    since: u64,
    capi: CapiPlan,
}

struct Inner {
    settings: EngineSettings,
    engine: EngineConfigInfo,
    /// Directory of the config file: the engine's and cscli's working directory.
    cwd: PathBuf,
    http: reqwest::Client,
    status: Mutex<StatusState>,
    current: Mutex<Option<Arc<Proc>>>,
    /// Cancels the start in progress and the restart task.
    cancel: Mutex<CancellationToken>,
    /// Serialises start and stop; holds the restart task.
    control: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    creds: watch::Sender<Option<EngineCreds>>,
}

/// Runs and watches one CrowdSec engine. Dropping it without [`Supervisor::stop`] sends
/// SIGTERM to the engine (SIGKILL after the grace period) without waiting.
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Checks the binaries and reads the engine config (`api.server.listen_uri`). Starts nothing.
    pub fn new(settings: EngineSettings) -> Result<Supervisor, EngineError> {
        let mut settings = settings;
        settings.crowdsec_bin =
            resolve_binary(&settings.crowdsec_bin).map_err(|reason| EngineError::Binary {
                what: "crowdsec binary (engine.crowdsec_bin)",
                path: settings.crowdsec_bin.clone(),
                reason,
            })?;
        settings.cscli_bin =
            resolve_binary(&settings.cscli_bin).map_err(|reason| EngineError::Binary {
                what: "cscli binary (engine.cscli_bin)",
                path: settings.cscli_bin.clone(),
                reason,
            })?;
        let given = settings.config_file.clone();
        let config_err = |reason: String| EngineError::Config {
            path: given.clone(),
            reason,
        };
        let config_file = std::fs::canonicalize(&settings.config_file)
            .map_err(|e| config_err(format!("cannot read it: {e}")))?;
        let engine = read_engine_config(&config_file).map_err(config_err)?;
        settings.config_file = config_file;
        if !engine.daemonize {
            warn!(
                "engine config {} sets common.daemonize: false: CrowdSec 1.4 then dies on SIGHUP \
                 and on SIGTERM without a clean shutdown; set it to true (it does not fork)",
                settings.config_file.display()
            );
        }
        let cwd = settings
            .config_file
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent(crate::lapi::USER_AGENT)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| config_err(format!("cannot build an HTTP client: {e}")))?;
        let (creds, _) = watch::channel(None);
        let capi = engine.capi_plan(&settings.config_file);
        Ok(Supervisor {
            inner: Arc::new(Inner {
                settings,
                engine,
                cwd,
                http,
                status: Mutex::new(StatusState {
                    state: EngineState::Stopped,
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                    last_error: None,
                    since: unix_now(),
                    capi,
                }),
                current: Mutex::new(None),
                cancel: Mutex::new(CancellationToken::new()),
                control: tokio::sync::Mutex::new(None),
                creds,
            }),
        })
    }

    /// Starts the engine, waits for its LAPI (`GET /health`, up to `health_timeout`) and
    /// makes sure cerberus has a valid bouncer key; then watches it and restarts it when
    /// it dies. When it already runs, returns the current credentials.
    pub async fn start(&self) -> Result<EngineCreds, EngineError> {
        let inner = &self.inner;
        let mut task = inner.control.lock().await;
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            if let Some(creds) = inner.creds.borrow().clone() {
                return Ok(creds);
            }
        }
        *task = None;
        let token = CancellationToken::new();
        *lock(&inner.cancel) = token.clone();
        inner.set_state(EngineState::Starting, None);
        let launched = tokio::select! {
            r = inner.launch() => r,
            _ = token.cancelled() => Err(EngineError::Cancelled),
        };
        match launched {
            Ok((proc, creds)) => {
                inner.running(proc.pid);
                inner.creds.send_replace(Some(creds.clone()));
                *task = Some(tokio::spawn(watch_loop(inner.clone(), proc, token)));
                Ok(creds)
            }
            Err(e) => {
                // On Cancelled the stop that cancelled us ends the process.
                if !matches!(e, EngineError::Cancelled) {
                    error!("[CROWDSEC_STARTUP] the CrowdSec engine did not start: {e}");
                    inner.set_state(EngineState::Failed, Some(e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Stops the engine: no more restarts, SIGTERM to its process group, SIGKILL after
    /// `stop_grace`. Returns once it is gone. Does nothing when it is not running.
    pub async fn stop(&self) {
        let inner = &self.inner;
        lock(&inner.cancel).cancel();
        let mut task = inner.control.lock().await;
        lock(&inner.cancel).cancel();
        if let Some(t) = task.take() {
            let _ = t.await;
        }
        let proc = lock(&inner.current).take();
        if let Some(p) = proc {
            inner.terminate(&p).await;
            info!("the CrowdSec engine (pid {}) is stopped", p.pid);
        }
        let _ = std::fs::remove_file(inner.pid_file());
        metrics::gauge!(crate::metrics::ENGINE_UP).set(0.0);
        inner.set_state(EngineState::Stopped, None);
    }

    /// Asks the engine to reload its config and hub items (SIGHUP; CrowdSec 1.4.6 reloads
    /// in place when `common.daemonize` is true). With `daemonize: false`, restarts it.
    pub async fn reload(&self) -> Result<(), EngineError> {
        let proc = lock(&self.inner.current)
            .clone()
            .filter(|p| p.exited().is_none())
            .ok_or(EngineError::NotRunning)?;
        if self.inner.engine.daemonize {
            if !proc.signal_leader(libc::SIGHUP) {
                return Err(EngineError::NotRunning);
            }
            info!(
                "asked the CrowdSec engine (pid {}) to reload (SIGHUP)",
                proc.pid
            );
            Ok(())
        } else {
            warn!(
                "restarting the CrowdSec engine to reload it (its config sets common.daemonize: \
                 false, so it would die on SIGHUP)"
            );
            self.stop().await;
            self.start().await.map(|_| ())
        }
    }

    /// Registers the engine with the central API (`cscli capi register -f CREDENTIALS`,
    /// which writes the online credentials) and, when the engine runs, restarts it so
    /// that it runs with its central API. Answers the new plan.
    pub async fn capi_register(&self) -> Result<CapiPlan, EngineError> {
        let config = self.inner.config().to_path_buf();
        let path = self
            .inner
            .engine
            .online_credentials
            .clone()
            .ok_or_else(|| EngineError::Config {
                path: config.clone(),
                reason: "it names no api.server.online_client.credentials_path; add one (e.g. \
                         /etc/crowdsec/online_api_credentials.yaml) so that cscli has \
                         somewhere to write the central API credentials"
                    .into(),
            })?;
        let path_text = path.display().to_string();
        // Its stdout could hold the new password: never shown on failure.
        self.inner
            .cscli_secret(&["--error", "capi", "register", "-f", &path_text])
            .await?;
        let plan = self.inner.engine.capi_plan(&config);
        info!(
            "[CROWDSEC_STARTUP] registered the engine with the central API; credentials in {path_text}"
        );
        let running = lock(&self.inner.current)
            .as_ref()
            .is_some_and(|p| p.exited().is_none());
        if running {
            info!("restarting the CrowdSec engine so that it runs with its central API");
            self.stop().await;
            self.start().await?;
        } else {
            lock(&self.inner.status).capi = plan.clone();
        }
        Ok(plan)
    }

    /// The state, pid, restarts and last exit.
    pub fn status(&self) -> EngineStatus {
        let s = lock(&self.inner.status);
        EngineStatus {
            state: s.state,
            pid: s.pid,
            restarts: s.restarts,
            last_exit: s.last_exit.clone(),
            last_error: s.last_error.clone(),
            since: s.since,
            lapi_url: self.inner.engine.lapi_url.clone(),
            capi: s.capi.clone(),
        }
    }

    /// The credentials of the last successful start, updated when a restart had to
    /// replace the bouncer key (`None` before the first start).
    pub fn creds(&self) -> watch::Receiver<Option<EngineCreds>> {
        self.inner.creds.subscribe()
    }

    /// Where the engine's LAPI listens (from `api.server.listen_uri`).
    pub fn lapi_url(&self) -> &str {
        &self.inner.engine.lapi_url
    }

    /// The engine config as read by [`Supervisor::new`].
    pub fn engine_config(&self) -> &EngineConfigInfo {
        &self.inner.engine
    }

    /// The settings, with the binaries and the config file resolved to full paths.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// `data_dir/engine_bouncer_key`.
    pub fn key_file(&self) -> PathBuf {
        self.inner.key_file()
    }

    /// Runs `cscli -c CONFIG ARGS...` (bounded to 60s); returns its stdout.
    pub async fn cscli(&self, args: &[&str]) -> Result<String, EngineError> {
        self.inner.cscli(args).await
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        lock(&self.inner.cancel).cancel();
        let Some(proc) = lock(&self.inner.current).take() else {
            return;
        };
        if proc.exited().is_some() {
            return;
        }
        warn!(
            "the engine supervisor was dropped without stop(): sending SIGTERM to the CrowdSec engine (pid {})",
            proc.pid
        );
        proc.signal_group(libc::SIGTERM);
        let grace = self.inner.settings.stop_grace;
        let _ = std::thread::Builder::new()
            .name("crowdsec-stop".into())
            .spawn(move || {
                let deadline = Instant::now() + grace;
                while proc.exited().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if proc.exited().is_none() {
                    proc.signal_group(libc::SIGKILL);
                }
            });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
