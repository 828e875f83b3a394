//! The managed CrowdSec engine: cerberus runs `crowdsec -c CONFIG -no-capi` (agent and
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

use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::ToSocketAddrs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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

/// What cerberus needs from the engine's config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfigInfo {
    /// `api.server.listen_uri` as written (`127.0.0.1:8080`).
    pub listen_uri: String,
    /// Where cerberus reaches it: `http://` + listen_uri, a wildcard host replaced by loopback.
    pub lapi_url: String,
    /// `api.client.credentials_path`: the agent's machine credentials.
    pub credentials_path: PathBuf,
    /// `common.daemonize` (CrowdSec 1.4 handles SIGHUP/SIGTERM only when true).
    pub daemonize: bool,
    /// `common.log_dir/crowdsec.log` when `common.log_media` is `file`.
    pub log_file: Option<PathBuf>,
}

/// Reads what cerberus needs from a CrowdSec config file (environment variables are
/// expanded first, as CrowdSec does). The error says what is missing and how to fix it.
pub fn read_engine_config(path: &Path) -> Result<EngineConfigInfo, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&expand_env(&text)).map_err(|e| format!("invalid YAML: {e}"))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    parse_engine_config(&value, base)
}

fn parse_engine_config(v: &serde_yaml_ng::Value, base: &Path) -> Result<EngineConfigInfo, String> {
    if !v.is_mapping() {
        return Err("not a CrowdSec config (expected a YAML mapping with common, api, ...)".into());
    }
    let get = |path: &[&str]| -> Option<&serde_yaml_ng::Value> {
        let mut cur = v;
        for k in path {
            cur = cur.get(*k)?;
        }
        Some(cur).filter(|x| !x.is_null())
    };
    let text = |path: &[&str]| -> Result<Option<String>, String> {
        match get(path) {
            None => Ok(None),
            Some(serde_yaml_ng::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_yaml_ng::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(serde_yaml_ng::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(serde_yaml_ng::Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(format!("{} must be a single value", path.join("."))),
        }
    };
    let flag = |path: &[&str]| -> Result<Option<bool>, String> {
        match get(path) {
            None => Ok(None),
            Some(serde_yaml_ng::Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!(
                "{} must be true or false, not {other:?}",
                path.join(".")
            )),
        }
    };
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };

    if flag(&["api", "server", "enable"])? == Some(false) {
        return Err(
            "api.server.enable is false: the managed engine must run its Local API \
                    (cerberus pulls decisions from it); remove that line"
                .into(),
        );
    }
    let listen_uri = text(&["api", "server", "listen_uri"])?.ok_or(
        "api.server.listen_uri is missing: the managed engine must run its Local API; \
         add e.g. `api: {server: {listen_uri: 127.0.0.1:8080}}`",
    )?;
    if get(&["api", "server", "tls", "cert_file"]).is_some() {
        return Err(
            "api.server.tls is set: cerberus reaches the managed engine's LAPI over \
                    plain HTTP on loopback; remove the tls section (or run the engine yourself \
                    and point api_url at it)"
                .into(),
        );
    }
    let lapi_url = lapi_url_of(&listen_uri)?;
    let credentials_path = text(&["api", "client", "credentials_path"])?
        .map(absolute)
        .ok_or(
            "api.client.credentials_path is missing: the engine's agent logs in to its LAPI \
             with the credentials in that file (e.g. /etc/crowdsec/local_api_credentials.yaml; \
             cerberus creates the file when it is missing)",
        )?;
    let daemonize = flag(&["common", "daemonize"])?.unwrap_or(false);
    let log_file = match text(&["common", "log_media"])?.as_deref() {
        Some("file") => Some(
            text(&["common", "log_dir"])?
                .map(absolute)
                .unwrap_or_else(|| PathBuf::from("/var/log"))
                .join("crowdsec.log"),
        ),
        _ => None,
    };
    Ok(EngineConfigInfo {
        listen_uri,
        lapi_url,
        credentials_path,
        daemonize,
        log_file,
    })
}

/// `127.0.0.1:8080` → `http://127.0.0.1:8080`; a wildcard host (`0.0.0.0`, `::`, empty)
/// is reached on loopback.
fn lapi_url_of(listen_uri: &str) -> Result<String, String> {
    let bad =
        || format!("api.server.listen_uri {listen_uri:?} is not host:port (e.g. 127.0.0.1:8080)");
    let uri = listen_uri
        .strip_prefix("http://")
        .unwrap_or(listen_uri)
        .trim_end_matches('/');
    let (host, port) = uri.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "[::1]".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    Ok(format!("http://{host}:{port}"))
}

/// Expands `$NAME` and `${NAME}` from the environment (unset: empty), as CrowdSec does
/// with its config (Go's `os.ExpandEnv`).
fn expand_env(text: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                out.push_str(&std::env::var(&inner[..end]).unwrap_or_default());
                rest = &inner[end + 1..];
                continue;
            }
        }
        let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
        if end == 0 {
            out.push('$');
        } else {
            out.push_str(&std::env::var(&after[..end]).unwrap_or_default());
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A binary given as a path (must be an executable file) or a bare name (searched in `PATH`).
pub fn resolve_binary(path: &Path) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if path.as_os_str().is_empty() {
        return Err("empty path".into());
    }
    if path.components().count() == 1 && !path.is_absolute() {
        let name = path;
        if let Some(dirs) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&dirs) {
                let candidate = dir.join(name);
                if executable(&candidate) {
                    return Ok(candidate);
                }
            }
        }
        return Err(
            "not found in PATH; install crowdsec (apt-get install crowdsec) or give its full path"
                .into(),
        );
    }
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err("no such file; install crowdsec (apt-get install crowdsec) or fix the path".into())
        }
        Err(e) => Err(format!("cannot use it: {e}")),
        Ok(m) if !m.is_file() => Err("not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("not executable (chmod +x it)".into()),
        Ok(_) => Ok(path.to_path_buf()),
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

/// How an engine process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub pid: u32,
    /// `exit status 1`, `killed by signal 9 (SIGKILL)`.
    pub status: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix time, seconds.
    pub at: u64,
    /// Its last stdout/stderr lines.
    pub last_output: Vec<String>,
}

impl ExitInfo {
    fn new(pid: u32, status: &io::Result<ExitStatus>, last_output: Vec<String>) -> ExitInfo {
        let (text, code, signal) = match status {
            Ok(s) => (describe_status(s), s.code(), s.signal()),
            Err(e) => (format!("unknown exit ({e})"), None, None),
        };
        ExitInfo {
            pid,
            status: text,
            code,
            signal,
            at: unix_now(),
            last_output,
        }
    }
}

fn describe_status(s: &ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit status {code}");
    }
    match s.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => format!("{s}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
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
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One engine process. A thread of its own spawns it and waits for it: `PR_SET_PDEATHSIG`
/// fires when the thread that forked the child ends, and this thread ends only after the
/// engine did (or with cerberus).
struct Proc {
    pid: u32,
    /// Set, under the lock, once the pid is reaped; signals are sent only under the lock
    /// and while it is false, so never to a recycled pid.
    reaped: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn spawn(
        bin: &Path,
        args: &[String],
        cwd: &Path,
        notify_socket: Option<&str>,
    ) -> io::Result<Arc<Proc>> {
        let parent = std::process::id() as libc::pid_t;
        let reaped = Arc::new(Mutex::new(false));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (spawned_tx, spawned_rx) = mpsc::sync_channel::<io::Result<u32>>(1);
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never cerberus' own (under systemd): the engine would speak for it.
            .env_remove("NOTIFY_SOCKET")
            .process_group(0);
        if let Some(name) = notify_socket {
            cmd.env("NOTIFY_SOCKET", name);
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // cerberus died between the fork and the prctl: the signal was missed.
                if libc::getppid() != parent {
                    return Err(io::Error::other(
                        "cerberus exited while starting the engine",
                    ));
                }
                Ok(())
            });
        }
        let (thread_reaped, thread_output) = (reaped.clone(), output.clone());
        std::thread::Builder::new()
            .name("crowdsec-engine".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = spawned_tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id();
                let (done_tx, done_rx) = mpsc::channel::<()>();
                let mut readers = 0;
                if let Some(out) = child.stdout.take() {
                    readers += read_lines(out, pid, thread_output.clone(), done_tx.clone());
                }
                if let Some(err) = child.stderr.take() {
                    readers += read_lines(err, pid, thread_output.clone(), done_tx.clone());
                }
                drop(done_tx);
                let _ = spawned_tx.send(Ok(pid));
                wait_no_reap(pid);
                let status = {
                    let mut reaped = thread_reaped.lock().unwrap_or_else(|e| e.into_inner());
                    // The pid is a zombie until reaped: its group id cannot be reused, so
                    // this reaches only what is left of the engine's own group.
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                    let status = child.wait();
                    *reaped = true;
                    status
                };
                // Let the readers drain what was written before the exit (bounded: a
                // process outside the group may still hold the pipe).
                let deadline = Instant::now() + Duration::from_secs(2);
                for _ in 0..readers {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if done_rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                let lines = thread_output
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                exit_tx.send_replace(Some(ExitInfo::new(pid, &status, lines)));
            })?;
        let pid = spawned_rx
            .recv()
            .map_err(|_| io::Error::other("the engine's spawner thread ended"))??;
        Ok(Arc::new(Proc {
            pid,
            reaped,
            exit: exit_rx,
            output,
        }))
    }

    /// Sends `sig` to the whole process group; false when the engine is already gone.
    fn signal_group(&self, sig: libc::c_int) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill has no memory-safety preconditions.
        !*reaped && unsafe { libc::kill(-(self.pid as libc::pid_t), sig) } == 0
    }

    /// Sends `sig` to the engine's main process only.
    fn signal_leader(&self, sig: libc::c_int) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill has no memory-safety preconditions.
        !*reaped && unsafe { libc::kill(self.pid as libc::pid_t, sig) } == 0
    }

    fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    async fn wait_exit(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let info = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        match info {
            Some(info) => info,
            // The thread never drops the sender before sending; be safe anyway.
            None => std::future::pending().await,
        }
    }

    fn last_output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Reads lines of one engine stream into the ring buffer (and the debug log); returns 1
/// when its thread started.
fn read_lines(
    stream: impl Read + Send + 'static,
    pid: u32,
    ring: Arc<Mutex<VecDeque<String>>>,
    done: mpsc::Sender<()>,
) -> usize {
    let started = std::thread::Builder::new()
        .name("crowdsec-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if line.is_empty() {
                            continue;
                        }
                        debug!(target: "cerberus::engine::output", pid, "{line}");
                        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
                        if ring.len() == OUTPUT_LINES {
                            ring.pop_front();
                        }
                        ring.push_back(line);
                    }
                }
            }
            let _ = done.send(());
        });
    usize::from(started.is_ok())
}

/// Blocks until `pid` (our child) has exited, without reaping it.
fn wait_no_reap(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t of ours.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// True once `pid` is gone: no such process, or a zombie whose threads have all ended
/// (an orphan's zombie may wait for a long time for a reaper).
fn proc_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    if state != Some(Some('Z')) {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() <= 1)
        .unwrap_or(true)
}

/// The live processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After "comm) ": state, ppid, pgrp.
                    let rest = stat.rsplit_once(") ")?.1.to_string();
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .filter(|pid| !proc_gone(*pid))
        .collect()
}

/// True when process `pid` runs with `-c config` on its command line.
fn runs_config(pid: u32, config: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let want = config.as_os_str().as_encoded_bytes();
    args.windows(2).any(|w| w[0] == b"-c" && w[1] == want)
}

/// The engine's readiness notification: a datagram socket in the abstract namespace
/// (no file to clean up) given to the engine as `NOTIFY_SOCKET`.
struct Notify {
    /// `@cerberus-engine-...`, as `NOTIFY_SOCKET` spells an abstract socket.
    name: String,
    sock: std::os::unix::net::UnixDatagram,
}

impl Notify {
    fn bind() -> Option<Notify> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cerberus-engine-{}-{}", std::process::id(), new_key());
        let bound = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| std::os::unix::net::UnixDatagram::bind_addr(&addr))
            .and_then(|sock| sock.set_nonblocking(true).map(|_| sock));
        match bound {
            Ok(sock) => Some(Notify {
                name: format!("@{name}"),
                sock,
            }),
            Err(e) => {
                warn!("cannot open a readiness socket for the engine ({e}); relying on GET /health alone");
                None
            }
        }
    }

    /// True when a `READY=1` arrived (reads what is queued, never waits).
    fn ready(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = self.sock.recv(&mut buf) {
            ready |= buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1");
        }
        ready
    }
}

/// SHA-512 in hex, as LAPI stores bouncer keys.
fn sha512_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct StatusState {
    state: EngineState,
    pid: Option<u32>,
    restarts: u64,
    last_exit: Option<ExitInfo>,
    last_error: Option<String>,
    since: u64,
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

/// Waits for the engine to die, then restarts it with backoff, until cancelled.
async fn watch_loop(inner: Arc<Inner>, mut proc: Arc<Proc>, token: CancellationToken) {
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
    fn set_state(&self, state: EngineState, error: Option<String>) {
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

    fn running(&self, pid: u32) {
        let mut s = lock(&self.status);
        s.state = EngineState::Running;
        s.pid = Some(pid);
        s.last_error = None;
        s.since = unix_now();
        metrics::gauge!(crate::metrics::ENGINE_UP).set(1.0);
    }

    fn key_file(&self) -> PathBuf {
        self.settings.data_dir.join(KEY_FILE)
    }

    fn pid_file(&self) -> PathBuf {
        self.settings.data_dir.join(PID_FILE)
    }

    fn config(&self) -> &Path {
        &self.settings.config_file
    }

    /// Starts one engine process and returns it once its LAPI answers and the bouncer
    /// key is valid. On error the process is already stopped.
    async fn launch(&self) -> Result<(Arc<Proc>, EngineCreds), EngineError> {
        self.stop_leftover().await;
        self.check_port()?;
        self.ensure_agent_credentials().await?;
        let args = vec![
            "-c".to_string(),
            self.config().display().to_string(),
            "-no-capi".to_string(),
        ];
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

    fn exited_error(&self, exit: &ExitInfo) -> EngineError {
        EngineError::Exited {
            status: exit.status.clone(),
            run: self.run_info(exit.last_output.clone()),
        }
    }

    fn run_info(&self, output: Vec<String>) -> Box<EngineRun> {
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
    async fn wait_ready(
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
    async fn terminate(&self, proc: &Proc) {
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

    fn write_pid_file(&self, pid: u32) {
        let path = self.pid_file();
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&self.settings.data_dir)?;
            super::pidfile::write(&path, pid)
        };
        if let Err(e) = write() {
            warn!(
                "cannot write the engine pid file {}: {e} (a leftover engine would not be found after a crash)",
                path.display()
            );
        }
    }

    /// Stops an engine that an earlier run of cerberus left behind: the process group
    /// named by the pid file, when its leader (started at the recorded time) or another
    /// member still runs this config.
    async fn stop_leftover(&self) {
        let path = self.pid_file();
        let recorded = match super::pidfile::read(&path) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(why) => {
                warn!("ignoring {}: {why}", path.display());
                let _ = std::fs::remove_file(&path);
                return;
            }
        };
        let pid = recorded.pid;
        let config = self.config();
        let ours = lock(&self.current)
            .as_ref()
            .is_some_and(|p| p.pid == pid && p.exited().is_none());
        let leader_alive = !proc_gone(pid);
        // A live leader that started at another time or runs something else: the pid was
        // recycled; a dead leader: its group (which keeps the id from being recycled) may
        // still hold the engine.
        let leftover = !ours
            && if leader_alive {
                let same = recorded.same_process();
                if !same {
                    info!(
                        "{}: pid {pid} now belongs to a process started at another time; not signalling it",
                        path.display()
                    );
                }
                same && runs_config(pid, config)
            } else {
                group_members(pid).iter().any(|m| runs_config(*m, config))
            };
        if !leftover {
            let _ = std::fs::remove_file(&path);
            return;
        }
        warn!(
            "a CrowdSec engine from an earlier run still runs (process group {pid}, -c {}); stopping it",
            config.display()
        );
        // SAFETY: getpgid has no memory-safety preconditions.
        let leader_of_group = unsafe { libc::getpgid(pid as libc::pid_t) } == pid as libc::pid_t;
        let target = if leader_alive && !leader_of_group {
            pid as libc::pid_t
        } else {
            -(pid as libc::pid_t)
        };
        let gone = move || proc_gone(pid) && group_members(pid).is_empty();
        let wait = |limit: Duration| async move {
            let deadline = Instant::now() + limit;
            while !gone() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            gone()
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target, libc::SIGTERM) };
        if !wait(self.settings.stop_grace).await {
            warn!("the leftover CrowdSec engine (process group {pid}) ignored SIGTERM; sending SIGKILL");
            // SAFETY: as above.
            unsafe { libc::kill(target, libc::SIGKILL) };
            if !wait(Duration::from_secs(10)).await {
                error!("the leftover CrowdSec engine (process group {pid}) survived SIGKILL");
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Fails early, with a clear message, when another process holds the LAPI's port.
    fn check_port(&self) -> Result<(), EngineError> {
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

    /// The agent logs in to the LAPI with the machine credentials of
    /// `api.client.credentials_path`; create them when the file is missing (as the
    /// crowdsec package's install script does).
    async fn ensure_agent_credentials(&self) -> Result<(), EngineError> {
        let path = &self.engine.credentials_path;
        if path.exists() {
            return Ok(());
        }
        info!(
            "the engine's agent has no LAPI credentials at {} (api.client.credentials_path); creating machine {} with cscli",
            path.display(),
            self.settings.bouncer_name
        );
        let path_text = path.display().to_string();
        self.cscli(&[
            "--error",
            "machines",
            "add",
            &self.settings.bouncer_name,
            "--auto",
            "--force",
            "-f",
            &path_text,
        ])
        .await?;
        Ok(())
    }

    /// Returns a bouncer key the engine's LAPI accepts: the one in the key file when LAPI
    /// still knows it, else a new one (bouncer re-created, file replaced).
    async fn ensure_bouncer_key(&self) -> Result<String, EngineError> {
        let path = self.key_file();
        let name = self.settings.bouncer_name.clone();
        let existing = self.read_key_file(&path)?;
        let listed = self
            .cscli(&["--error", "bouncers", "list", "-o", "json"])
            .await?;
        let bouncers: serde_json::Value =
            serde_json::from_str(listed.trim()).map_err(|e| EngineError::Cscli {
                config: self.config().to_path_buf(),
                args: "bouncers list -o json".into(),
                status: format!("its output is not JSON ({e})"),
                output: listed
                    .lines()
                    .take(SHOWN_LINES)
                    .map(str::to_string)
                    .collect(),
            })?;
        let entry = bouncers
            .as_array()
            .and_then(|list| list.iter().find(|b| b["name"].as_str() == Some(&name)))
            .cloned();
        if let Some(key) = existing {
            let problem = match &entry {
                None => Some(format!("bouncer {name} is not in the engine's LAPI")),
                Some(b) if b["revoked"].as_bool() == Some(true) => {
                    Some(format!("bouncer {name} is revoked"))
                }
                Some(b) => match b["api_key"].as_str() {
                    Some(hash) if !hash.eq_ignore_ascii_case(&sha512_hex(&key)) => {
                        Some(format!("bouncer {name} has another key"))
                    }
                    _ => None,
                },
            };
            match problem {
                None => {
                    info!(
                        "[CROWDSEC_STARTUP] using the engine bouncer key in {} (bouncer {name})",
                        path.display()
                    );
                    return Ok(key);
                }
                Some(why) => warn!(
                    "the engine bouncer key in {} is no longer valid ({why}); creating a new one",
                    path.display()
                ),
            }
        }
        if entry.is_some() {
            self.cscli(&["--error", "bouncers", "delete", &name])
                .await?;
        }
        let key = new_key();
        self.cscli(&["--error", "bouncers", "add", &name, "-k", &key])
            .await?;
        self.write_key_file(&path, &key)?;
        info!(
            "[CROWDSEC_STARTUP] created bouncer {name} in the engine's LAPI; its key is in {} (mode 0600)",
            path.display()
        );
        Ok(key)
    }

    fn read_key_file(&self, path: &Path) -> Result<Option<String>, EngineError> {
        let key_err = |reason: String| EngineError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(format!("cannot read it: {e}"))),
        };
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        if mode & 0o077 != 0 {
            warn!(
                "the engine bouncer key {} had mode {mode:04o}; setting 0600",
                path.display()
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| key_err(format!("cannot set mode 0600: {e}")))?;
        }
        let key = text.trim();
        Ok((!key.is_empty()).then(|| key.to_string()))
    }

    fn write_key_file(&self, path: &Path, key: &str) -> Result<(), EngineError> {
        let key_err = |e: io::Error| EngineError::KeyFile {
            path: path.to_path_buf(),
            reason: format!("cannot write it: {e}"),
        };
        std::fs::create_dir_all(&self.settings.data_dir).map_err(key_err)?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(key_err)?;
        f.write_all(format!("{key}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(key_err)?;
        std::fs::rename(&tmp, path).map_err(key_err)
    }

    async fn cscli(&self, args: &[&str]) -> Result<String, EngineError> {
        let shown = args.join(" ");
        let fail = |status: String, output: Vec<String>| EngineError::Cscli {
            config: self.config().to_path_buf(),
            args: shown.clone(),
            status,
            output,
        };
        let mut cmd = tokio::process::Command::new(&self.settings.cscli_bin);
        cmd.arg("-c")
            .arg(self.config())
            .args(args)
            .current_dir(&self.cwd)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CSCLI_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(fail(
                    format!("no answer within {}s", CSCLI_TIMEOUT.as_secs()),
                    vec![],
                ))
            }
            Ok(Err(e)) => return Err(fail(format!("cannot run it: {e}"), vec![])),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            return Err(fail(describe_status(&out.status), lines));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<EngineConfigInfo, String> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse_engine_config(&v, Path::new("/etc/crowdsec"))
    }

    const GOOD: &str = "common:\n  daemonize: true\n  log_media: file\n  log_dir: /var/log/\n\
                        api:\n  client:\n    credentials_path: local_api_credentials.yaml\n  \
                        server:\n    listen_uri: 127.0.0.1:8080\n";

    #[test]
    fn reads_what_cerberus_needs() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.lapi_url, "http://127.0.0.1:8080");
        assert_eq!(
            c.credentials_path,
            PathBuf::from("/etc/crowdsec/local_api_credentials.yaml")
        );
        assert!(c.daemonize);
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/crowdsec.log")));
    }

    #[test]
    fn wildcard_hosts_are_reached_on_loopback() {
        assert_eq!(
            lapi_url_of("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(lapi_url_of(":8081").unwrap(), "http://127.0.0.1:8081");
        assert_eq!(lapi_url_of("[::]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(lapi_url_of("[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(lapi_url_of("localhost:9").unwrap(), "http://localhost:9");
        assert!(lapi_url_of("127.0.0.1").is_err());
        assert!(lapi_url_of("127.0.0.1:http").is_err());
        assert!(lapi_url_of("127.0.0.1:0").is_err());
    }

    #[test]
    fn config_problems_say_what_to_fix() {
        let e = parse("api:\n  client:\n    credentials_path: /x\n").unwrap_err();
        assert!(e.contains("api.server.listen_uri is missing"), "{e}");
        let e = parse(&format!("{GOOD}    tls:\n      cert_file: /c.pem\n")).unwrap_err();
        assert!(e.contains("api.server.tls"), "{e}");
        let e = parse("api:\n  server:\n    listen_uri: 127.0.0.1:1\n").unwrap_err();
        assert!(e.contains("api.client.credentials_path"), "{e}");
        let e = parse(&format!("{GOOD}    enable: false\n")).unwrap_err();
        assert!(e.contains("api.server.enable"), "{e}");
        let e = parse("- a\n").unwrap_err();
        assert!(e.contains("not a CrowdSec config"), "{e}");
        let e = parse(&GOOD.replace("daemonize: true", "daemonize: maybe")).unwrap_err();
        assert!(e.contains("common.daemonize"), "{e}");
    }

    #[test]
    fn environment_is_expanded_like_crowdsec_does() {
        // PATH is set for every test run; the environment is not changed here (other
        // tests read it at the same time).
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(
            expand_env("a: ${PATH}\nb: $PATH/x\n"),
            format!("a: {path}\nb: {path}/x\n")
        );
        assert_eq!(expand_env("a $ b ${CERBERUS_TEST_UNSET_X}c"), "a $ b c");
        assert_eq!(expand_env("${unterminated"), "${unterminated");
    }

    #[test]
    fn key_hash_matches_lapi() {
        // `printf %s 0123456789abcdef0123456789abcdef | sha512sum`, and what 1.4.6's
        // `cscli bouncers list -o json` shows for that key.
        assert_eq!(
            sha512_hex("0123456789abcdef0123456789abcdef"),
            "0372a8619ebcbbcd91abcda1ba389ac36e72962887b3019de3372a561fd962da\
             7e9cfa0c3069c46ca5dc2ad88e607e70bb7a87996ab96fea7aa27e5288952055"
        );
        let k = new_key();
        assert_eq!(k.len(), 64);
        assert_ne!(k, new_key());
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(
            describe_status(&ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
        assert_eq!(
            describe_status(&ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn binaries_are_checked() {
        let e = resolve_binary(Path::new("/nonexistent/crowdsec")).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        assert!(resolve_binary(Path::new("sh")).is_ok());
        let e = resolve_binary(Path::new("cerberus-no-such-binary")).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("crowdsec");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        let e = resolve_binary(&f).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        assert!(resolve_binary(dir.path())
            .unwrap_err()
            .contains("not a file"));
    }
}
