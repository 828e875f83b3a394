//! CrowdSec console enrollment and the heartbeat poller.
//!
//! Enrollment is made by the engine's own tool: `cscli -c ENGINE_CONFIG console enroll
//! [--name N] [--tags T]... [--overwrite] -- KEY`. In CrowdSec 1.4.6 that command logs in
//! to the central API (CAPI) named in the engine's online credentials
//! (`api.server.online_client.credentials_path`: `url`, `login`, `password`) with
//! `POST {url}v2/watchers/login` `{"machine_id","password","scenarios"}`, then sends
//! `POST {url}v2/watchers/enroll` `{"attachment_key","name","tags","overwrite"}` with the
//! token. A 2xx other than 200 is a new enrollment; 200 means "already enrolled" (cscli
//! warns and exits 0); any other answer or a network error makes it exit 1 with a
//! `level=fatal msg="Could not enroll instance: ..."` line. cscli runs with `--debug`,
//! whose lines give the HTTP status of the login (`auth-jwt : http N`) and of the enroll
//! call (`Response: HTTP/1.1 N ...`). CrowdSec 1.5 and later (checked with 1.7.8:
//! `cmd/crowdsec-cli/cliconsole/console.go`, `enroll`) speak `v3` instead of `v2` to the
//! central API, send `{"attachment_key","name","tags","autoenroll"}` (`overwrite` only
//! when true: `pkg/apiclient/auth_service.go`, `EnrollWatcher`), write `level=debug`
//! lines without a time, and end a failure with `Error: cscli console enroll: ...` on
//! stderr (`cmd/crowdsec-cli/main.go`, `fatal`) instead of a fatal log line; their API
//! client retries a refused connection or a 5xx with a 20-second backoff
//! (`pkg/apiclient/auth_retry.go`), which cerberus turns off
//! (`CROWDSEC_FEATURE_DISABLE_HTTP_RETRY_BACKOFF=true`) since it retries itself.
//! [`classify`] turns all that into a [`Failure`]
//! with a message that says what to do. Only transient failures (central API
//! unreachable, 5xx) are retried: [`ATTEMPTS`] attempts with a doubling backoff.
//!
//! The enrollment key is a secret: it goes to cscli's command line only (cscli 1.4.6
//! has no other way to take it; it is visible in the process list while cscli runs),
//! is never logged, never stored, and is scrubbed from anything cscli prints before a
//! line of it reaches a log or an answer.
//!
//! The state (`not_enrolled`, `enrolling`, `enrolled`, `failed` with the reason) and the
//! last heartbeat live in `data_dir/console.json`, so they survive restarts.
//!
//! The heartbeat checks the engine's standing with the central API the way the engine's
//! API client does: log in with the online credentials (`POST {url}v2/watchers/login`,
//! with the scenarios installed in the engine's config dir) and call
//! `GET {url}v2/heartbeat` with the token (`apiclient.HeartBeat.Ping` under the
//! prefix that the engine uses for the central API: `v2` up to 1.4, `v3` from 1.5 on,
//! `pkg/apiserver/apic.go` of 1.7.8; read once from `cscli version`). The poller does it at start and
//! then every `heartbeat_interval`.

use crate::config::Config;
use crate::outbound::{Cause, Unreachable};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
pub use standing::Standing;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

mod standing;

/// Attempts of one enrollment (only transient failures are tried again).
pub const ATTEMPTS: u32 = 3;
/// The heartbeat interval when the config does not set one.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The wait before the second attempt; doubled before each later one.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How long one cscli run may take before it is killed.
const CSCLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for each heartbeat request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The file in `data_dir` that keeps the state.
pub const STATE_FILE: &str = "console.json";
/// Longest text taken from a central API message.
const MAX_MESSAGE: usize = 300;
/// Stands for the enrollment key wherever cscli's output would show it.
const KEY_MASK: &str = "<enrollment key>";

/// Where an enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnrollState {
    #[default]
    NotEnrolled,
    Enrolling,
    Enrolled,
    Failed,
}

impl EnrollState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollState::NotEnrolled => "not_enrolled",
            EnrollState::Enrolling => "enrolling",
            EnrollState::Enrolled => "enrolled",
            EnrollState::Failed => "failed",
        }
    }
}

/// Why an enrollment did not simply succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The central API says the enrollment key has expired.
    ExpiredKey,
    /// The central API refused the enrollment key.
    InvalidKey,
    /// The central API answered 200: this engine was enrolled before.
    AlreadyEnrolled,
    /// The central API refused the engine's own login (its online credentials).
    Unauthorized,
    /// No connection to the central API (refused, DNS, timeout, TLS).
    Unreachable,
    /// The central API answered 5xx or 429.
    ServerError,
    /// The engine's config, credentials, hub or cscli itself is not usable.
    EngineConfig,
    /// Another enrollment is running.
    Busy,
    /// cscli failed in a way not recognised.
    Other,
}

impl FailureKind {
    /// Short, stable name (answers, the persisted state, metric labels).
    pub fn code(self) -> &'static str {
        match self {
            FailureKind::ExpiredKey => "expired_key",
            FailureKind::InvalidKey => "invalid_key",
            FailureKind::AlreadyEnrolled => "already_enrolled",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Unreachable => "unreachable",
            FailureKind::ServerError => "server_error",
            FailureKind::EngineConfig => "engine_config",
            FailureKind::Busy => "busy",
            FailureKind::Other => "other",
        }
    }

    /// Worth another attempt.
    pub fn transient(self) -> bool {
        matches!(self, FailureKind::Unreachable | FailureKind::ServerError)
    }
}

/// A failed (or refused) enrollment: what happened and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// What to enroll with. Check each part with [`check_key`], [`check_name`], [`check_tag`].
#[derive(Clone)]
pub struct EnrollRequest {
    pub key: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    /// `--overwrite`: enroll again an engine that is already enrolled.
    pub overwrite: bool,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("key", &KEY_MASK)
            .field("name", &self.name)
            .field("tags", &self.tags)
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// The most tags sent with one enrollment.
pub const MAX_TAGS: usize = 16;

/// An enrollment key: 8 to 256 ASCII letters, digits, `-`, `_` or `.`. The message never
/// repeats the key.
pub fn check_key(key: &str) -> Result<(), String> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if key.len() < 8 || key.len() > 256 || !ok_chars {
        return Err("`enrollment_key` must be the key shown in the CrowdSec console (8 to 256 letters, digits, `-`, `_` or `.`)".into());
    }
    Ok(())
}

/// A display name for the console: 1 to 128 characters, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err("`name` must be 1 to 128 characters without control characters".into());
    }
    Ok(())
}

/// One tag: 1 to 64 characters, without `,` or `"` (cscli splits and unquotes its
/// `--tags` values as CSV) or control characters.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.trim().is_empty()
        || tag.chars().count() > 64
        || tag.chars().any(|c| c == ',' || c == '"' || c.is_control())
    {
        return Err(format!(
            "each tag must be 1 to 64 characters without `,` or `\"` (cscli reads them as CSV); {tag:?} is not"
        ));
    }
    Ok(())
}

/// The outcome of one heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub ok: bool,
    /// RFC 3339, UTC.
    pub at: String,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// When the central API was not reached: why (`refused`, `timeout`, `dns`, `proxy`, `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

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

/// What `console.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    state: EnrollState,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Why it failed (state `failed`), or a note on an enrollment that stands.
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    updated_at: Option<String>,
    /// When the last successful enrollment was made (kept through later failures).
    #[serde(default)]
    enrolled_at: Option<String>,
    #[serde(default)]
    last_heartbeat: Option<Heartbeat>,
}

/// How the console part is set up.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// The cscli to run (a name is looked up in `PATH`).
    pub cscli_bin: PathBuf,
    /// The engine's `config.yaml`.
    pub engine_config: PathBuf,
    /// Where `console.json` is kept.
    pub data_dir: PathBuf,
    /// Zero: no poller (`POST /console/heartbeat` still works).
    pub heartbeat_interval: Duration,
    pub retry_backoff: Duration,
}

/// Console enrollment and heartbeats for one engine.
pub struct Console {
    settings: ConsoleSettings,
    http: reqwest::Client,
    saved: Mutex<Saved>,
    busy: AtomicBool,
    /// `v2` or `v3`: what the engine speaks to the central API (from `cscli version`).
    api_version: tokio::sync::OnceCell<&'static str>,
    /// When this cerberus started (a poller that never sent a heartbeat is late from here).
    started: SystemTime,
    /// Whether the heartbeat poller task runs.
    poller_alive: AtomicBool,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Console {
    /// The console of the engine that `config` names (`console_engine_config`); `None`
    /// when it names none.
    /// The engine is `console_engine_config` (an engine cerberus does not run), else the
    /// managed engine (`engine.config_file` and `engine.cscli_bin`); `None` without either.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Console>> {
        let (engine_config, cscli_bin) = match &config.console_engine_config {
            Some(c) => (c.clone(), config.console_cscli_bin.clone()),
            None if config.engine.enabled => (
                config.engine.config_file.clone(),
                config.engine.cscli_bin.clone(),
            ),
            None => return Ok(None),
        };
        let console = Console::new(ConsoleSettings {
            cscli_bin,
            engine_config,
            data_dir: config.data_dir.clone(),
            heartbeat_interval: config.heartbeat_interval,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        })?;
        Ok(Some(console))
    }

    /// Loads the persisted state from `data_dir/console.json` (a missing file is
    /// `not_enrolled`; an unreadable one is moved aside, with a warning).
    pub fn new(settings: ConsoleSettings) -> anyhow::Result<Console> {
        let http = reqwest::Client::builder()
            .user_agent(crate::lapi::USER_AGENT)
            .connect_timeout(HTTP_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()?;
        let saved = load_state(&settings.data_dir);
        info!(
            "console: engine config {}, cscli {}, enrollment {}, heartbeat {}",
            settings.engine_config.display(),
            settings.cscli_bin.display(),
            saved.state.as_str(),
            if settings.heartbeat_interval.is_zero() {
                "off".to_string()
            } else {
                format!(
                    "every {}",
                    humantime::format_duration(settings.heartbeat_interval)
                )
            }
        );
        Ok(Console {
            settings,
            http,
            saved: Mutex::new(saved),
            busy: AtomicBool::new(false),
            api_version: tokio::sync::OnceCell::new(),
            started: SystemTime::now(),
            poller_alive: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &ConsoleSettings {
        &self.settings
    }

    fn span(&self) -> tracing::Span {
        info_span!("console", engine = %self.settings.engine_config.display())
    }

    /// Changes the state and writes it out.
    fn update(&self, f: impl FnOnce(&mut Saved)) {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut saved);
        saved.updated_at = Some(now_rfc3339());
        if let Err(e) = save_state(&self.settings.data_dir, &saved) {
            error!(
                "console: cannot write {}: {e}; the enrollment state will not survive a restart",
                self.settings.data_dir.join(STATE_FILE).display()
            );
        }
    }

    pub fn state(&self) -> EnrollState {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub fn last_heartbeat(&self) -> Option<Heartbeat> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_heartbeat
            .clone()
    }

    /// Whether the poller runs and what the console shows for the engine.
    pub fn standing(&self) -> Standing {
        standing::standing(
            self.last_heartbeat().as_ref(),
            SystemTime::now(),
            self.started,
            self.settings.heartbeat_interval,
            self.state() == EnrollState::Enrolled,
            self.poller_alive.load(Ordering::Acquire),
        )
    }

    /// `GET /console/status`: the enrollment, the central API, the heartbeats.
    pub fn status(&self) -> Value {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let central_api = match read_engine(&self.settings.engine_config) {
            Ok(engine) => json!({"url": engine.url, "credentials": engine.credentials_path}),
            Err(e) => json!({"error": e}),
        };
        json!({
            "state": saved.state,
            "name": saved.name,
            "tags": saved.tags,
            "reason": saved.reason,
            "code": saved.code,
            "attempts": saved.attempts,
            "updated_at": saved.updated_at,
            "enrolled_at": saved.enrolled_at,
            "engine_config": self.settings.engine_config,
            "central_api": central_api,
            "heartbeat": {
                "interval_seconds": self.settings.heartbeat_interval.as_secs(),
                "last": saved.last_heartbeat,
            },
        })
    }

    /// The `console` object of `GET /status`.
    pub fn summary(&self) -> Value {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = json!({
            "state": saved.state,
            "reason": saved.reason,
            "enrolled_at": saved.enrolled_at,
            "last_heartbeat": saved.last_heartbeat,
        });
        drop(saved);
        out["standing"] = json!(self.standing());
        out
    }

    /// Enrolls the engine; runs to its end even when the caller goes away. On success
    /// answers the new status.
    pub async fn enroll(self: &Arc<Self>, req: EnrollRequest) -> Result<Value, Failure> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Failure::new(
                FailureKind::Busy,
                "an enrollment is already running; wait for it (GET /console/status shows it)",
            ));
        }
        let me = self.clone();
        let span = self.span();
        let task = tokio::spawn(
            async move {
                let result = me.enroll_inner(req).await;
                me.busy.store(false, Ordering::Release);
                result
            }
            .instrument(span),
        );
        match task.await {
            Ok(r) => r,
            Err(e) => {
                self.busy.store(false, Ordering::Release);
                self.update(|s| {
                    s.state = EnrollState::Failed;
                    s.reason = Some(format!("the enrollment task stopped: {e}"));
                    s.code = Some(FailureKind::Other.code().into());
                });
                Err(Failure::new(
                    FailureKind::Other,
                    format!("the enrollment task stopped: {e}"),
                ))
            }
        }
    }

    async fn enroll_inner(&self, req: EnrollRequest) -> Result<Value, Failure> {
        let engine = match read_engine(&self.settings.engine_config) {
            Ok(e) => e,
            Err(msg) => {
                let f = Failure::new(FailureKind::EngineConfig, msg);
                self.fail(&f, 0);
                return Err(f);
            }
        };
        let (old_name, old_tags) = {
            let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            (saved.name.clone(), saved.tags.clone())
        };
        self.update(|s| {
            s.state = EnrollState::Enrolling;
            s.name = req.name.clone();
            s.tags = req.tags.clone();
            s.reason = None;
            s.code = None;
            s.attempts = 0;
        });
        info!(
            "[CROWDSEC_ENROLLMENT] enrolling the engine with the central API at {} (name {}, tags [{}])",
            engine.url,
            req.name.as_deref().unwrap_or("(engine default)"),
            req.tags.join(", ")
        );
        let mut backoff = self.settings.retry_backoff;
        let mut attempt = 1;
        loop {
            self.update(|s| s.attempts = attempt);
            let run = self.run_cscli(&req).await;
            match classify(&run, &engine, &req.key) {
                Ok(note) => {
                    self.update(|s| {
                        s.state = EnrollState::Enrolled;
                        s.reason = note.clone();
                        s.code = None;
                        s.enrolled_at = Some(now_rfc3339());
                    });
                    metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => "enrolled")
                        .increment(1);
                    info!("[CROWDSEC_ENROLLMENT] enrollment completed");
                    if let Some(n) = note {
                        warn!("[CROWDSEC_ENROLLMENT] {n}");
                    }
                    return Ok(self.status());
                }
                Err(f) if f.kind == FailureKind::AlreadyEnrolled => {
                    self.update(|s| {
                        s.state = EnrollState::Enrolled;
                        s.name = old_name;
                        s.tags = old_tags;
                        s.reason = Some(f.message.clone());
                        s.code = Some(f.kind.code().into());
                        if s.enrolled_at.is_none() {
                            s.enrolled_at = Some(now_rfc3339());
                        }
                    });
                    metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => f.kind.code())
                        .increment(1);
                    warn!("[CROWDSEC_ENROLLMENT] {}", f.message);
                    return Err(f);
                }
                Err(f) if f.kind.transient() && attempt < ATTEMPTS => {
                    warn!(
                        "[CROWDSEC_ENROLLMENT] attempt {attempt}/{ATTEMPTS} failed: {}",
                        f.message
                    );
                    attempt += 1;
                    info!(
                        backoff_ms = backoff.as_millis() as u64,
                        "[CROWDSEC_ENROLLMENT] retrying enrollment (attempt {attempt}/{ATTEMPTS})"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(f) => {
                    self.fail(&f, attempt);
                    return Err(f);
                }
            }
        }
    }

    fn fail(&self, f: &Failure, attempts: u32) {
        self.update(|s| {
            s.state = EnrollState::Failed;
            s.reason = Some(f.message.clone());
            s.code = Some(f.kind.code().into());
            s.attempts = attempts;
        });
        metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => f.kind.code())
            .increment(1);
        error!("[CROWDSEC_ENROLLMENT] enrollment failed: {}", f.message);
    }

    /// Runs cscli once. The command line holds the key: it is never formatted or logged.
    async fn run_cscli(&self, req: &EnrollRequest) -> CscliRun {
        let mut cmd = tokio::process::Command::new(&self.settings.cscli_bin);
        cmd.arg("-c").arg(&self.settings.engine_config).args([
            "-o", "human", "--color", "no", "--debug", "console", "enroll",
        ]);
        if let Some(name) = &req.name {
            cmd.arg(format!("--name={name}"));
        }
        for tag in &req.tags {
            cmd.arg(format!("--tags={tag}"));
        }
        if req.overwrite {
            cmd.arg("--overwrite");
        }
        cmd.arg("--").arg(&req.key);
        // cscli 1.5+ would retry a refused connection or a 5xx for minutes (backoff from
        // 20s, pkg/apiclient/auth_retry.go); cerberus retries itself. 1.4 ignores it.
        cmd.env("CROWDSEC_FEATURE_DISABLE_HTTP_RETRY_BACKOFF", "true");
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(CSCLI_TIMEOUT, cmd.output()).await {
            Err(_) => CscliRun::TimedOut,
            Ok(Err(e)) => CscliRun::NotStarted(format!(
                "cannot run cscli ({}): {e}; set console_cscli_bin to the engine's cscli",
                self.settings.cscli_bin.display()
            )),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
                text.push('\n');
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                CscliRun::Exited {
                    success: out.status.success(),
                    status: out.status.to_string(),
                    output: text,
                }
            }
        }
    }

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

fn load_state(data_dir: &Path) -> Saved {
    let path = data_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::default(),
        Err(e) => {
            warn!(
                "console: cannot read {}: {e}; the enrollment shows as not_enrolled",
                path.display()
            );
            return Saved::default();
        }
    };
    match serde_json::from_str::<Saved>(&text) {
        Ok(mut saved) => {
            if saved.state == EnrollState::Enrolling {
                saved.state = EnrollState::Failed;
                saved.code = Some(FailureKind::Other.code().into());
                saved.reason = Some(
                    "interrupted: cerberus stopped during the enrollment; enroll again".into(),
                );
            }
            saved
        }
        Err(e) => {
            let aside = data_dir.join(format!("{STATE_FILE}.corrupt"));
            warn!(
                "console: {} is not valid ({e}); moved to {} and starting as not_enrolled",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(&path, &aside);
            Saved::default()
        }
    }
}

fn save_state(data_dir: &Path, saved: &Saved) -> std::io::Result<()> {
    let path = data_dir.join(STATE_FILE);
    let tmp = data_dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// What the engine's config says about the central API.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The engine's `config.yaml`.
    pub config: PathBuf,
    pub credentials_path: PathBuf,
    /// With its trailing slash.
    pub url: String,
    /// `host:port`, for "open outbound TCP to ...".
    pub hostport: String,
    pub login: String,
    pub password: String,
    /// Names of the scenarios installed in the engine's config dir.
    pub scenarios: Vec<String>,
}

fn yaml_str<'a>(v: &'a serde_yaml_ng::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

/// Reads the engine's config and its online (central API) credentials; every error
/// names the file and the fix.
pub fn read_engine(config: &Path) -> Result<Engine, String> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        format!(
            "cannot read the engine config {}: {e}; set console_engine_config to CrowdSec's config.yaml",
            config.display()
        )
    })?;
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        format!(
            "the engine config {} is not valid YAML: {e}",
            config.display()
        )
    })?;
    let creds_path = yaml_str(&yaml, &["api", "server", "online_client", "credentials_path"])
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "the engine config {} has no api.server.online_client.credentials_path: the engine is not registered with the central API; run `cscli capi register` on the engine",
                config.display()
            )
        })?;
    let credentials_path = PathBuf::from(creds_path);
    let creds_text = std::fs::read_to_string(&credentials_path).map_err(|e| {
        format!(
            "cannot read the engine's central API credentials {}: {e}; run `cscli capi register` on the engine",
            credentials_path.display()
        )
    })?;
    let creds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&creds_text).map_err(|e| {
        format!(
            "the central API credentials {} are not valid YAML: {e}",
            credentials_path.display()
        )
    })?;
    let field = |name: &str| {
        yaml_str(&creds, &[name])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "the central API credentials {} have no `{name}`; run `cscli capi register` on the engine",
                    credentials_path.display()
                )
            })
    };
    let (url, login, password) = (field("url")?, field("login")?, field("password")?);
    let parsed = reqwest::Url::parse(&url).map_err(|e| {
        format!(
            "`url` in {} is not a URL ({e}): {url:?}",
            credentials_path.display()
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "`url` in {} must be an http:// or https:// URL, not {url:?}",
            credentials_path.display()
        ));
    }
    if !url.ends_with('/') {
        return Err(format!(
            "`url` in {} must end with `/` (CrowdSec 1.4.6 cannot use {url:?}): write {url:?} + \"/\"",
            credentials_path.display()
        ));
    }
    let hostport = format!(
        "{}:{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port_or_known_default().unwrap_or(443)
    );
    let config_dir = yaml_str(&yaml, &["config_paths", "config_dir"]).unwrap_or("/etc/crowdsec/");
    Ok(Engine {
        config: config.to_path_buf(),
        credentials_path,
        url,
        hostport,
        login,
        password,
        scenarios: installed_scenarios(&Path::new(config_dir).join("scenarios")),
    })
}

/// The `name` of each scenario file in `dir` (where cscli links the installed ones).
fn installed_scenarios(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .take(4096)
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            // A scenario file may hold several documents; the first names it.
            let doc = serde_yaml_ng::Deserializer::from_str(&text).next()?;
            let v = serde_yaml_ng::Value::deserialize(doc).ok()?;
            yaml_str(&v, &["name"]).map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Why the central API could not be reached, classified with its fix
/// ([`crate::outbound::classify`]); the DNS fix names the engine's credentials file.
fn unreachable_of(
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
fn capi_version_of(text: &str) -> &'static str {
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

fn bounded(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX_MESSAGE).collect();
        format!("{cut}...")
    }
}

/// How one cscli run ended.
#[derive(Debug)]
pub enum CscliRun {
    NotStarted(String),
    TimedOut,
    Exited {
        success: bool,
        status: String,
        /// stderr then stdout.
        output: String,
    },
}

/// One logrus line of cscli: its level and message (unescaped).
fn logrus_line(line: &str) -> Option<(&str, String)> {
    let level = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("level="))?;
    let at = line.find(" msg=")? + 5;
    let rest = &line[at..];
    let msg = if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        out
    } else {
        rest.split_whitespace().next().unwrap_or("").to_string()
    };
    Some((level, msg))
}

/// What cscli's output says.
#[derive(Debug, Default)]
struct Reading {
    /// HTTP status of `POST v2/watchers/login` (`v3` from 1.5 on).
    login_status: Option<u16>,
    /// HTTP status of `POST v2/watchers/enroll`.
    enroll_status: Option<u16>,
    fatal: Option<String>,
    already: bool,
}

fn read_output(output: &str) -> Reading {
    let mut r = read_lines(output);
    // cscli 1.5+ gives up on a 429/5xx of its retrying transport without a status line:
    // `could not get jwt token: retryable status: 500` (pkg/apiclient/auth_retry.go).
    if let Some(fatal) = &r.fatal {
        if let Some(i) = fatal.find("retryable status: ") {
            let code = fatal[i + "retryable status: ".len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|c| c.parse().ok());
            if fatal[..i].contains("could not get jwt token") {
                r.login_status = r.login_status.or(code);
            } else {
                r.enroll_status = r.enroll_status.or(code);
            }
        }
    }
    r
}

fn read_lines(output: &str) -> Reading {
    let mut r = Reading::default();
    for line in output.lines() {
        // cscli 1.5+: `Error: cscli console enroll: could not enroll instance: ...`.
        if let Some(rest) = line.trim().strip_prefix("Error: ") {
            if r.fatal.is_none() {
                let rest = rest.strip_prefix("cscli console enroll: ").unwrap_or(rest);
                r.fatal = Some(rest.to_string());
            }
            continue;
        }
        let Some((level, msg)) = logrus_line(line) else {
            continue;
        };
        if let Some(code) = msg.strip_prefix("auth-jwt : http ") {
            r.login_status = code.trim().parse().ok();
        } else if let Some(rest) = msg.strip_prefix("Response: HTTP/") {
            r.enroll_status = rest.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        } else if let Some(code) = msg.strip_prefix("resp-jwt: ") {
            r.enroll_status = r.enroll_status.or(code.trim().parse().ok());
        }
        if level == "fatal" && r.fatal.is_none() {
            r.fatal = Some(msg.clone());
        }

        // cscli's own warning; the debug dump of the answer body does not count.
        if level.starts_with("warn") && msg.to_ascii_lowercase().contains("already enrolled") {
            r.already = true;
        }
    }
    r
}

/// The central API's own words in a cscli error (`... API error: WORDS`).
fn api_error_text(fatal: &str) -> String {
    match fatal.find("API error: ") {
        Some(i) => bounded(&fatal[i + "API error: ".len()..]),
        None => bounded(fatal),
    }
}

/// Turns a cscli run into success (with an optional note) or a [`Failure`]. `key` is
/// scrubbed from every text taken from cscli.
pub fn classify(run: &CscliRun, engine: &Engine, key: &str) -> Result<Option<String>, Failure> {
    let (success, status, output) = match run {
        CscliRun::NotStarted(msg) => return Err(Failure::new(FailureKind::EngineConfig, msg)),
        CscliRun::TimedOut => {
            return Err(Failure::new(
                FailureKind::Unreachable,
                format!(
                "cscli did not finish within {}s (killed); check that outbound TCP to {} is open",
                CSCLI_TIMEOUT.as_secs(),
                engine.hostport
            ),
            ))
        }
        CscliRun::Exited {
            success,
            status,
            output,
        } => (*success, status, output),
    };
    let scrubbed;
    let output = if key.is_empty() {
        output.as_str()
    } else {
        scrubbed = output.replace(key, KEY_MASK);
        scrubbed.as_str()
    };
    let r = read_output(output);
    if success {
        // cscli warns only without --overwrite; with it, a 200 is a new enrollment.
        if r.already {
            return Err(Failure::new(
                FailureKind::AlreadyEnrolled,
                "this engine is already enrolled in the console (the central API answered 200); name and tags were left as they were; send \"overwrite\": true to enroll it again (for example under another account)",
            ));
        }
        return Ok(None);
    }
    let Some(fatal) = r.fatal.clone() else {
        return Err(Failure::new(
            FailureKind::Other,
            format!("cscli console enroll failed ({status}) without saying why"),
        ));
    };
    let lower = fatal.to_ascii_lowercase();
    // cscli writes the engine's console options after the central API said yes.
    if r.enroll_status.is_some_and(|c| (200..300).contains(&c)) && lower.contains("console config")
    {
        return Ok(Some(format!(
            "the central API accepted the enrollment, but cscli could not save the engine's console options ({}); give cerberus write access to the engine's console_path, or run `cscli console enable --all` on the engine",
            bounded(&fatal)
        )));
    }
    let said = api_error_text(&fatal);
    let unauthorized = |code: String| {
        Failure::new(
            FailureKind::Unauthorized,
            format!(
                "the central API refused the engine's login ({code}{said}); the online credentials in {} are wrong or revoked: run `cscli capi register` on the engine and restart it",
                engine.credentials_path.display()
            ),
        )
    };
    let server_error = |code: String| {
        Failure::new(
            FailureKind::ServerError,
            format!(
                "the central API at {} failed ({code}{said}); the fault is on its side: try again later",
                engine.url
            ),
        )
    };
    let key_refused = |code: String| {
        if lower.contains("expire") {
            Failure::new(
                FailureKind::ExpiredKey,
                format!(
                    "the enrollment key has expired (central API: {code}{said}); create a new key in the CrowdSec console (app.crowdsec.net) and enroll again"
                ),
            )
        } else {
            Failure::new(
                FailureKind::InvalidKey,
                format!(
                    "the central API refused the enrollment key as invalid ({code}{said}); copy the enrollment key again from the CrowdSec console (app.crowdsec.net)"
                ),
            )
        }
    };
    let http = |c: u16| format!("HTTP {c}: ");
    // The HTTP statuses from the debug lines are the surest guide.
    match (r.login_status, r.enroll_status) {
        (Some(c @ (401 | 403)), _) => return Err(unauthorized(http(c))),
        (Some(c), _) if c >= 500 || c == 429 => return Err(server_error(http(c))),
        (_, Some(c)) if c >= 500 || c == 429 => return Err(server_error(http(c))),
        (_, Some(c @ 400..=499)) => return Err(key_refused(http(c))),
        _ => {}
    }
    // Otherwise, the words.
    const NETWORK: &[&str] = &[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "client.timeout",
        "could not get jwt token",
        "tls:",
        "x509:",
        "eof",
    ];
    if NETWORK.iter().any(|w| lower.contains(w)) {
        let cause = fatal
            .rsplit(": ")
            .next()
            .map(bounded)
            .unwrap_or_else(|| bounded(&fatal));
        return Err(Failure::new(
            FailureKind::Unreachable,
            format!(
                "the central API at {} is unreachable ({cause}); outbound TCP to {} must be open (firewall, proxy, DNS)",
                engine.url, engine.hostport
            ),
        ));
    }
    const ENGINE: &[&str] = &[
        "no configuration for central api",
        "cscli capi register",
        "unable to load",
        "local api is disabled",
        "failed to get scenarios",
        "failed to load hub index",
        "trailing slash",
        "could not parse capi url",
        "missing 'cscli' configuration",
        "failed writing console config",
        "while loading",
        "no such file or directory",
        "permission denied",
    ];
    if ENGINE.iter().any(|w| lower.contains(w)) {
        return Err(Failure::new(
            FailureKind::EngineConfig,
            format!(
                "cscli cannot use the engine's setup: {}; fix the engine config {} (or the files it names)",
                bounded(&fatal),
                engine.config.display()
            ),
        ));
    }
    if lower.contains("api error:") {
        if lower.contains("internal server error") || lower.contains("http code 5") {
            return Err(server_error(String::new()));
        }
        if lower.contains("username or password") || lower.contains("unauthorized") {
            return Err(unauthorized(String::new()));
        }
        return Err(key_refused(String::new()));
    }
    Err(Failure::new(
        FailureKind::Other,
        format!("cscli console enroll failed: {}", bounded(&fatal)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine {
            config: "/etc/crowdsec/config.yaml".into(),
            credentials_path: "/etc/crowdsec/online_api_credentials.yaml".into(),
            url: "https://api.crowdsec.net/".into(),
            hostport: "api.crowdsec.net:443".into(),
            login: "m".into(),
            password: "p".into(),
            scenarios: vec![],
        }
    }

    fn exited(success: bool, output: &str) -> CscliRun {
        CscliRun::Exited {
            success,
            status: if success {
                "exit status: 0"
            } else {
                "exit status: 1"
            }
            .into(),
            output: output.into(),
        }
    }

    const LOGIN_OK: &str = "time=\"x\" level=debug msg=\"auth-jwt : http 200\"\n";

    fn enroll_answer(code: u16, reason: &str, message: &str, fatal: Option<&str>) -> String {
        let mut s = String::from(LOGIN_OK);
        s.push_str(&format!(
            "time=\"x\" level=debug msg=\"Response: HTTP/1.1 {code} {reason}\\r\\nContent-Type: application/json\\r\\n\\r\\n{{\\\"message\\\":\\\"{message}\\\"}}\"\n"
        ));
        if let Some(f) = fatal {
            s.push_str(&format!("time=\"x\" level=fatal msg=\"{f}\"\n"));
        }
        s
    }

    #[test]
    fn parses_logrus_lines() {
        let (level, msg) =
            logrus_line(r#"time="25-11-2026 12:03:41" level=fatal msg="Could not enroll instance: Post \"http://h/v2/watchers/enroll\": boom""#)
                .unwrap();
        assert_eq!(level, "fatal");
        assert_eq!(
            msg,
            r#"Could not enroll instance: Post "http://h/v2/watchers/enroll": boom"#
        );
        assert!(logrus_line("2026/11/25 version: v1.4.6").is_none());
    }

    #[test]
    fn success_and_already_enrolled() {
        let ok = enroll_answer(202, "Accepted", "ok", None)
            + "time=\"x\" level=info msg=\"Watcher successfully enrolled. Visit https://app.crowdsec.net to accept it.\"\n";
        assert_eq!(
            classify(&exited(true, &ok), &engine(), "KEY12345"),
            Ok(None)
        );
        let already = enroll_answer(200, "OK", "", None)
            + "time=\"x\" level=warning msg=\"Instance already enrolled. You can use '--overwrite' to force enroll\"\n";
        let f = classify(&exited(true, &already), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::AlreadyEnrolled);
        assert!(f.message.contains("overwrite"), "{}", f.message);
        let unsaved = enroll_answer(
            202,
            "Accepted",
            "ok",
            Some("failed writing console config : open /etc/crowdsec/console.yaml: permission denied"),
        );
        let note = classify(&exited(false, &unsaved), &engine(), "KEY12345")
            .unwrap()
            .unwrap();
        assert!(note.contains("console_path"), "{note}");
        // With --overwrite cscli does not warn; the answer body saying so is no warning.
        let overwritten = enroll_answer(200, "OK", "instance already enrolled", None);
        assert_eq!(
            classify(&exited(true, &overwritten), &engine(), "KEY12345"),
            Ok(None)
        );
    }

    #[test]
    fn refused_keys() {
        let out = enroll_answer(
            403,
            "Forbidden",
            "the attachment key provided has expired",
            Some("Could not enroll instance: API error: the attachment key provided has expired"),
        );
        let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::ExpiredKey);
        assert!(f.message.contains("expired") && f.message.contains("new key"));
        let out = enroll_answer(
            403,
            "Forbidden",
            "the attachment key provided is not valid",
            Some("Could not enroll instance: API error: the attachment key provided is not valid"),
        );
        let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::InvalidKey);
        assert!(f.message.contains("HTTP 403"), "{}", f.message);
        assert!(!f.kind.transient());
    }

    #[test]
    fn login_refused_and_server_errors() {
        let out = "time=\"x\" level=debug msg=\"auth-jwt : http 403\"\n\
                   time=\"x\" level=fatal msg=\"Could not enroll instance: Post \\\"https://api.crowdsec.net/v2/watchers/enroll\\\": API error: forbidden\"\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Unauthorized);
        assert!(f.message.contains("cscli capi register"), "{}", f.message);
        let out = enroll_answer(
            500,
            "Internal Server Error",
            "Internal server error",
            Some("Could not enroll instance: API error: Internal server error"),
        );
        let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::ServerError);
        assert!(f.kind.transient());
    }

    #[test]
    fn unreachable_names_host_and_port() {
        let out = "time=\"x\" level=fatal msg=\"Could not enroll instance: Post \\\"https://api.crowdsec.net/v2/watchers/enroll\\\": could not get jwt token: Post \\\"https://api.crowdsec.net/v2/watchers/login\\\": dial tcp 1.2.3.4:443: connect: connection refused\"\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Unreachable);
        assert!(f.message.contains("api.crowdsec.net:443"), "{}", f.message);
        assert!(f.message.contains("connection refused"), "{}", f.message);
    }

    /// What cscli 1.7.8 printed here against a closed port (its `Error:` line ends a run).
    #[test]
    fn cscli_1_7_8_errors_are_read() {
        let out = "level=debug msg=\"[URL] POST http://127.0.0.1:9/v3/watchers/enroll\"\n\
                   level=debug msg=\"auth-jwt(auth): POST http://127.0.0.1:9/v3/watchers/login\"\n\
                   Error: cscli console enroll: could not enroll instance: Post \"http://127.0.0.1:9/v3/watchers/enroll\": could not get jwt token: Post \"http://127.0.0.1:9/v3/watchers/login\": retryable error: dial tcp 127.0.0.1:9: connect: connection refused\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Unreachable);
        assert!(f.message.contains("connection refused"), "{}", f.message);

        // An error cerberus does not know is passed on in cscli's words.
        let out = "Error: cscli console enroll: something new went wrong\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Other);
        assert_eq!(
            f.message,
            "cscli console enroll failed: something new went wrong"
        );

        // Accepted by the central API, then the console options could not be written.
        let out = "level=debug msg=\"Response: HTTP/1.1 202 Accepted\"\n\
                   Error: cscli console enroll: failed writing console config: while dumping console config to /etc/crowdsec/console.yaml: open /etc/crowdsec/console.yaml: no such file or directory\n";
        let note = classify(&exited(false, out), &engine(), "KEY12345").unwrap();
        assert!(note.unwrap().contains("console_path"));

        let out = "level=debug msg=\"auth-jwt : http 403\"\n\
                   Error: cscli console enroll: could not enroll instance: API error: forbidden\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Unauthorized);
    }

    #[test]
    fn cscli_1_7_8_gives_up_on_a_5xx_login() {
        let out = "Error: cscli console enroll: could not enroll instance: Post \"http://h/v3/watchers/enroll\": performing jwt auth: could not get jwt token: retryable status: 500\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::ServerError);
        assert!(f.message.contains("HTTP 500"), "{}", f.message);
    }

    #[test]
    fn troubleshooting_rows_name_their_fix() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = engine();
        let m = |why: &str, timed_out: bool, pairs: &'static [(&'static str, &'static str)]| {
            unreachable_of(&e, why, timed_out, env(pairs)).message()
        };
        // A dead proxy: the proxy is named, not api.crowdsec.net:443.
        let t = m(
            "connection refused",
            false,
            &[("HTTPS_PROXY", "http://127.0.0.1:3128")],
        );
        assert!(
            t.contains("through the proxy 127.0.0.1:3128 (from HTTPS_PROXY)"),
            "{t}"
        );
        let t = m(
            "connection refused",
            false,
            &[("https_proxy", "http://p:8080")],
        );
        assert!(t.contains("p:8080"), "{t}");
        // NO_PROXY covers the host: no proxy.
        let t = m(
            "connection refused",
            false,
            &[
                ("HTTPS_PROXY", "http://p:1"),
                ("NO_PROXY", "localhost,.crowdsec.net"),
            ],
        );
        assert!(
            !t.contains("proxy") && t.contains("outbound TCP to api.crowdsec.net:443"),
            "{t}"
        );
        // DNS (the fix names the credentials file), timeout, refused.
        let t = m(
            "failed to lookup address information: Name or service not known",
            false,
            &[],
        );
        assert!(
            t.contains("does not resolve")
                && t.contains("resolv.conf")
                && t.contains("online_api_credentials"),
            "{t}"
        );
        let t = m("no answer within 10s", true, &[]);
        assert!(t.contains("drops packets"), "{t}");
        let t = m("connection refused", false, &[]);
        assert!(
            t.contains("outbound TCP to api.crowdsec.net:443 must be open"),
            "{t}"
        );
    }

    #[test]
    fn central_api_version_follows_cscli() {
        assert_eq!(
            capi_version_of("2026/12/01 21:30:08 version: v1.4.6-6~deb12u1+b1-debian\n2026/12/01 21:30:08 Codename: alphaga\n"),
            "v2"
        );
        assert_eq!(capi_version_of("version: v1.7.8\nCodename: \n"), "v3");
        assert_eq!(capi_version_of("version: v1.10.0\n"), "v3");
        assert_eq!(capi_version_of(""), "v3");
    }

    #[test]
    fn the_key_is_scrubbed() {
        let out =
            "time=\"x\" level=fatal msg=\"Could not enroll instance: strange KEY12345 here\"\n";
        let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
        assert_eq!(f.kind, FailureKind::Other);
        assert!(!f.message.contains("KEY12345"), "{}", f.message);
        assert!(f.message.contains(KEY_MASK));
        let req = EnrollRequest {
            key: "KEY12345".into(),
            name: None,
            tags: vec![],
            overwrite: false,
        };
        assert!(!format!("{req:?}").contains("KEY12345"));
    }

    #[test]
    fn input_checks() {
        assert!(check_key("cl9abcdefghijklmnop12345").is_ok());
        for bad in [
            "",
            "short",
            "has space in it",
            "semi;colon12",
            &"x".repeat(300),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(check_name("web-1").is_ok());
        assert!(check_name(" ").is_err());
        assert!(check_tag("prod").is_ok());
        assert!(check_tag("a,b").is_err());
        assert!(check_tag("a\"b").is_err());
    }

    #[test]
    fn engine_config_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        assert!(read_engine(&cfg).unwrap_err().contains("cannot read"));
        std::fs::write(&cfg, "api:\n  server:\n    listen_uri: 127.0.0.1:8080\n").unwrap();
        assert!(read_engine(&cfg)
            .unwrap_err()
            .contains("cscli capi register"));
        let creds = dir.path().join("online.yaml");
        std::fs::write(
            &cfg,
            format!(
                "config_paths:\n  config_dir: {}\napi:\n  server:\n    online_client:\n      credentials_path: {}\n",
                dir.path().display(),
                creds.display()
            ),
        )
        .unwrap();
        std::fs::write(&creds, "url: http://127.0.0.1:9/\nlogin: m\n").unwrap();
        assert!(read_engine(&cfg).unwrap_err().contains("no `password`"));
        std::fs::write(&creds, "url: http://127.0.0.1:9\nlogin: m\npassword: p\n").unwrap();
        assert!(read_engine(&cfg).unwrap_err().contains("must end with `/`"));
        std::fs::write(&creds, "url: http://127.0.0.1:9/\nlogin: m\npassword: p\n").unwrap();
        std::fs::create_dir(dir.path().join("scenarios")).unwrap();
        std::fs::write(
            dir.path().join("scenarios/probing.yaml"),
            "type: leaky\nname: crowdsecurity/http-probing\n---\nname: second\n",
        )
        .unwrap();
        let e = read_engine(&cfg).unwrap();
        assert_eq!(e.hostport, "127.0.0.1:9");
        assert_eq!(e.scenarios, vec!["crowdsecurity/http-probing"]);
    }

    #[test]
    fn state_survives_and_an_interrupted_enrollment_is_failed() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved {
            state: EnrollState::Enrolling,
            ..Saved::default()
        };
        save_state(dir.path(), &saved).unwrap();
        let back = load_state(dir.path());
        assert_eq!(back.state, EnrollState::Failed);
        assert!(back.reason.unwrap().contains("interrupted"));
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        assert_eq!(load_state(dir.path()).state, EnrollState::NotEnrolled);
        assert!(dir.path().join("console.json.corrupt").exists());
    }
}
