//! CrowdSec console enrollment and the heartbeat poller, for one engine. [`Console`]
//! holds the state and is what the admin API and the app use; its parts:
//! - `enroll.rs`: one enrollment, made by the engine's own cscli and retried when the
//!   failure is transient;
//! - `cscli.rs`: what cscli printed, turned into success or a [`Failure`] that says
//!   what to do ([`classify`]);
//! - `heartbeat.rs`: the central-API client of the heartbeat (login, `GET heartbeat`)
//!   and the poller that runs it every `heartbeat_interval`;
//! - `engine.rs`: the engine's config and its online credentials ([`read_engine`]);
//! - `state.rs`: `data_dir/console.json`, where the state (`not_enrolled`, `enrolling`,
//!   `enrolled`, `failed` with the reason) and the last heartbeat survive restarts;
//! - `standing.rs`: what the console shows for the engine, read from the heartbeats.
//!
//! The enrollment key is a secret: it goes to cscli's command line only (cscli 1.4.6
//! has no other way to take it; it is visible in the process list while cscli runs),
//! is never logged, never stored, and is scrubbed from anything cscli prints before a
//! line of it reaches a log or an answer.

mod cscli;
mod engine;
mod enroll;
mod heartbeat;
mod standing;
mod state;

use crate::config::Config;
use crate::outbound::Cause;
pub use cscli::{classify, CscliRun};
pub use engine::{read_engine, Engine};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
pub use standing::Standing;
use state::{load_state, save_state, Saved};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tracing::{error, info, info_span};

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
}

fn bounded(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX_MESSAGE).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests;
