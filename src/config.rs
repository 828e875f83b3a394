//! Configuration: a YAML file whose keys follow CrowdSec's own bouncers, every key also
//! settable as `CERBERUS_<KEY>`, checked as a whole so that `cerberus check` lists every
//! problem at once, each naming its key.

mod appsec;
mod build;
mod captcha;
mod reader;
mod secrets;
#[cfg(test)]
mod tests;

pub use appsec::{AppsecConfig, AppsecFail};
pub use captcha::{CaptchaConfig, Provider as CaptchaProvider, MIN_SIGNING_KEY_LEN};
pub use reader::parse_size;
use reader::Reader;
pub use secrets::MIN_ADMIN_TOKEN_LEN;

use crate::duration::parse_config_duration;
use crate::store::UnreachablePolicy;
use ipnet::IpNet;
use serde_yaml_ng::{Mapping, Value};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    List,
    Bool,
    Int,
}

/// Every key cerberus knows, with how an environment value is read.
const KEYS: &[(&str, Kind)] = &[
    ("api_url", Kind::Str),
    ("api_key", Kind::Str),
    ("api_key_file", Kind::Str),
    ("cert_path", Kind::Str),
    ("key_path", Kind::Str),
    ("ca_cert_path", Kind::Str),
    ("insecure_skip_verify", Kind::Bool),
    ("update_frequency", Kind::Str),
    ("scopes", Kind::List),
    ("origins", Kind::List),
    ("scenarios_containing", Kind::List),
    ("scenarios_not_containing", Kind::List),
    ("supported_decisions_types", Kind::List),
    ("machine_id", Kind::Str),
    ("machine_password", Kind::Str),
    ("machine_password_file", Kind::Str),
    ("data_dir", Kind::Str),
    ("socket", Kind::Str),
    ("socket_mode", Kind::Str),
    ("socket_max_connections", Kind::Int),
    ("socket_idle_timeout", Kind::Str),
    ("snapshot_dir", Kind::Str),
    ("forward_auth_listen", Kind::Str),
    ("forward_auth_max_connections", Kind::Int),
    ("admin_max_connections", Kind::Int),
    ("http_header_timeout", Kind::Str),
    ("http_write_timeout", Kind::Str),
    ("http_idle_timeout", Kind::Str),
    ("admin_listen", Kind::Str),
    ("admin_token", Kind::Str),
    ("admin_token_file", Kind::Str),
    ("capi_url", Kind::Str),
    ("geoip_database", Kind::Str),
    ("trusted_proxies", Kind::List),
    ("client_ip_header", Kind::Str),
    ("on_lapi_unreachable", Kind::Str),
    ("stale_after", Kind::Str),
    ("ban_status", Kind::Int),
    ("ban_template", Kind::Str),
    ("log_format", Kind::Str),
    ("log_level", Kind::Str),
    ("lapi_timeout", Kind::Str),
    ("lapi_max_body", Kind::Str),
    ("lapi_retry_max", Kind::Str),
    ("full_resync_interval", Kind::Str),
    ("usage_metrics_interval", Kind::Str),
    ("engine.enabled", Kind::Bool),
    ("engine.crowdsec_bin", Kind::Str),
    ("engine.cscli_bin", Kind::Str),
    ("engine.config_file", Kind::Str),
    ("engine.stop_grace", Kind::Str),
    ("engine.hub_url", Kind::Str),
    ("console_engine_config", Kind::Str),
    ("console_cscli_bin", Kind::Str),
    ("heartbeat_interval", Kind::Str),
    ("captcha_provider", Kind::Str),
    ("captcha_site_key", Kind::Str),
    ("captcha_secret_key", Kind::Str),
    ("captcha_secret_key_file", Kind::Str),
    ("captcha_signing_key", Kind::Str),
    ("captcha_signing_key_file", Kind::Str),
    ("captcha_expiration", Kind::Str),
    ("captcha_template", Kind::Str),
    ("captcha_script_url", Kind::Str),
    ("captcha_verify_url", Kind::Str),
    ("appsec_url", Kind::Str),
    ("appsec_timeout", Kind::Str),
    ("appsec_fail", Kind::Str),
    ("appsec_max_body", Kind::Str),
];

/// Nested sections: `engine: {enabled: true}` is read as the key `engine.enabled`, and
/// from the environment as `CERBERUS_ENGINE_ENABLED`.
const SECTIONS: &[&str] = &["engine"];

/// True for `127.0.0.1:P`, `[::1]:P`, `localhost:P`: addresses only this machine reaches.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().is_loopback();
    }
    addr.rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}
/// Shortest non-zero `heartbeat_interval`.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest non-zero `usage_metrics_interval` (LAPI aggregates windows of minutes).
const MIN_USAGE_METRICS_INTERVAL: Duration = Duration::from_secs(10);

/// A check of the config by the part that owns what a key names (the engine's binaries
/// and config file, say): it sees the config as read and names what is wrong.
pub type Check = fn(&Config) -> Vec<Problem>;

/// The hub index cerberus installs presets from unless `engine.hub_url` says otherwise.
pub const DEFAULT_HUB_URL: &str = "https://cdn-hub.crowdsec.net/crowdsecurity/master/.index.json";

/// One thing wrong with a config, tied to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Where a listener binds: `host:port`, `unix:/path`, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    Unix(PathBuf),
    Off,
}

impl Listen {
    pub fn parse(value: &str) -> Result<Listen, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, e.g. unix:/run/cerberus/auth.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        match value.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Listen::Tcp(value.to_string()))
            }
            _ => Err(format!(
                "{value:?} is neither host:port (127.0.0.1:7420) nor unix:/path nor off"
            )),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Off => write!(f, "off"),
        }
    }
}

/// The managed CrowdSec engine (section `engine:`); the engine part checks its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Run `crowdsec` (agent and LAPI) and pull from its LAPI. Default false.
    pub enabled: bool,
    /// Default `/usr/bin/crowdsec`.
    pub crowdsec_bin: PathBuf,
    /// Default `/usr/bin/cscli`.
    pub cscli_bin: PathBuf,
    /// The engine's own config. Default `/etc/crowdsec/config.yaml`.
    pub config_file: PathBuf,
    /// SIGTERM to SIGKILL when stopping the engine. Default 10s.
    pub stop_grace: Duration,
    /// The hub index that presets come from. Default: the official hub.
    pub hub_url: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            enabled: false,
            crowdsec_bin: "/usr/bin/crowdsec".into(),
            cscli_bin: "/usr/bin/cscli".into(),
            config_file: "/etc/crowdsec/config.yaml".into(),
            stop_grace: Duration::from_secs(10),
            hub_url: DEFAULT_HUB_URL.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole configuration, with defaults filled in. See `examples/cerberus.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// LAPI base URLs, in the order they are tried (all on one database); empty is
    /// standalone mode (decisions only from the admin API).
    pub api_url: Vec<String>,
    pub api_key: Option<String>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub ca_cert_path: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Delta pull interval. Default 10s.
    pub update_frequency: Duration,
    /// Scopes asked from LAPI. Default `ip`, `range`.
    pub scopes: Vec<String>,
    pub origins: Vec<String>,
    pub scenarios_containing: Vec<String>,
    pub scenarios_not_containing: Vec<String>,
    /// Decision types enforced; empty (default) enforces every type.
    pub supported_decisions_types: Vec<String>,
    pub machine_id: Option<String>,
    pub machine_password: Option<String>,
    /// Default `./cerberus-data`.
    pub data_dir: PathBuf,
    /// Default `{data_dir}/cerberus.sock`.
    pub socket: PathBuf,
    /// Default 0660.
    pub socket_mode: u32,
    /// Connections served at once on the socket; more are told `busy`. Default 1024.
    pub socket_max_connections: usize,
    /// A socket connection with nothing outstanding for this long is closed. Default 60s
    /// (the protocol promises clients at least 60s).
    pub socket_idle_timeout: Duration,
    /// Where the snapshot segments for the Caddy module go (`bouncer-api/SNAPSHOT.md`);
    /// see [`Config::snapshot_path`].
    pub snapshot_dir: SnapshotDir,
    /// Default `127.0.0.1:7420`.
    pub forward_auth_listen: Listen,
    /// Default `127.0.0.1:8088`.
    pub admin_listen: Listen,
    /// Connections served at once by forward_auth (default 1024) and the admin API
    /// (default 64); more are closed at once and counted as shed. At start both are
    /// lowered to fit the descriptor budget (see [`crate::serve::fds`]).
    pub forward_auth_max_connections: usize,
    pub admin_max_connections: usize,
    /// HTTP doors: time for a request head, counted from when the connection is ready
    /// for it (so an idle keep-alive connection is closed after it too). Default 10s.
    pub http_header_timeout: Duration,
    /// HTTP doors: an answer that cannot be written for this long (a peer that sends
    /// and never reads) closes the connection. Default 10s.
    pub http_write_timeout: Duration,
    /// HTTP doors: no byte either way for this long, with no request being handled,
    /// closes the connection (a stalled body). Default 60s.
    pub http_idle_timeout: Duration,
    pub admin_token: Option<String>,
    /// The CrowdSec central API, probed by the diagnostics.
    pub capi_url: String,
    /// A MaxMind-format `.mmdb` giving every listed decision its country (see [`crate::geoip`]).
    pub geoip_database: Option<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    /// Default `X-Forwarded-For`.
    pub client_ip_header: String,
    /// Default `keep`.
    pub on_lapi_unreachable: UnreachablePolicy,
    /// Default 5m (only used by `open` and `closed`).
    pub stale_after: Duration,
    /// Default 403.
    pub ban_status: u16,
    pub ban_template: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Default `info`.
    pub log_level: String,
    /// Whole-request limit for one LAPI call, body included. Default 120s.
    pub lapi_timeout: Duration,
    /// Largest LAPI answer accepted, in bytes. Default 1 GiB.
    pub lapi_max_body: u64,
    /// Longest wait between retries after LAPI errors. Default 60s.
    pub lapi_retry_max: Duration,
    /// Longest time between two full pulls (`startup=true`) while deltas succeed: LAPI's
    /// deltas miss decisions written while a pull is answered. Default 5m.
    pub full_resync_interval: Duration,
    /// How often usage metrics are pushed to LAPI (`POST /v1/usage-metrics`); zero turns
    /// them off. Default 15m; LAPI mode only.
    pub usage_metrics_interval: Duration,
    /// The managed CrowdSec engine (off by default).
    pub engine: EngineConfig,
    /// The CrowdSec engine's `config.yaml` for console enrollment and heartbeats; `None`
    /// turns the console routes off (they answer 409).
    pub console_engine_config: Option<PathBuf>,
    /// The engine's cscli, run for `console enroll`. Default `cscli` (from `PATH`).
    pub console_cscli_bin: PathBuf,
    /// How often the heartbeat poller checks the engine with the central API; zero
    /// turns the poller off. Default 5m.
    pub heartbeat_interval: Duration,
    /// The `captcha_*` keys; captcha is off without `captcha_provider`.
    pub captcha: CaptchaConfig,
    /// The files secrets were read from, by key (`api_key_file`, ...), for
    /// [`Config::exposed_secret_files`].
    pub secret_files: Vec<(String, PathBuf)>,
    /// CrowdSec's AppSec component (off by default; see [`crate::appsec`]).
    pub appsec: AppsecConfig,
}

impl Default for Config {
    fn default() -> Self {
        let data_dir = PathBuf::from("./cerberus-data");
        Config {
            api_url: Vec::new(),
            api_key: None,
            cert_path: None,
            key_path: None,
            ca_cert_path: None,
            insecure_skip_verify: false,
            update_frequency: Duration::from_secs(10),
            scopes: vec!["ip".into(), "range".into()],
            origins: vec![],
            scenarios_containing: vec![],
            scenarios_not_containing: vec![],
            supported_decisions_types: vec![],
            machine_id: None,
            machine_password: None,
            socket: data_dir.join("cerberus.sock"),
            snapshot_dir: SnapshotDir::NextToSocket,
            data_dir,
            socket_mode: 0o660,
            socket_max_connections: 1024,
            socket_idle_timeout: Duration::from_secs(60),
            forward_auth_listen: Listen::Tcp("127.0.0.1:7420".into()),
            admin_listen: Listen::Tcp("127.0.0.1:8088".into()),
            forward_auth_max_connections: 1024,
            admin_max_connections: 64,
            http_header_timeout: Duration::from_secs(10),
            http_write_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            admin_token: None,
            capi_url: "https://api.crowdsec.net".into(),
            geoip_database: None,
            trusted_proxies: vec![],
            client_ip_header: "X-Forwarded-For".into(),
            on_lapi_unreachable: UnreachablePolicy::Keep,
            stale_after: Duration::from_secs(300),
            ban_status: 403,
            ban_template: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            lapi_timeout: Duration::from_secs(120),
            lapi_max_body: 1 << 30,
            lapi_retry_max: Duration::from_secs(60),
            full_resync_interval: Duration::from_secs(5 * 60),
            usage_metrics_interval: Duration::from_secs(15 * 60),
            engine: EngineConfig::default(),
            console_engine_config: None,
            console_cscli_bin: PathBuf::from("cscli"),
            heartbeat_interval: Duration::from_secs(5 * 60),
            captcha: CaptchaConfig::default(),
            secret_files: Vec::new(),
            appsec: AppsecConfig::default(),
        }
    }
}

impl Config {
    /// Standalone unless an `api_url` is set or the engine is managed.
    pub fn standalone(&self) -> bool {
        self.api_url.is_empty() && !self.engine.enabled
    }

    /// `standalone`, `lapi` (an external LAPI) or `engine` (the managed engine's LAPI).
    pub fn mode(&self) -> &'static str {
        if self.engine.enabled {
            "engine"
        } else if !self.api_url.is_empty() {
            "lapi"
        } else {
            "standalone"
        }
    }

    /// Loads from an optional file plus the process environment. Only this file's own
    /// checks run: [`crate::app::load_config`] adds those of the parts that own other
    /// files (the managed engine's binaries and config).
    pub fn load(path: Option<&Path>) -> Result<Config, Vec<Problem>> {
        Config::load_checked(path, &[])
    }

    /// [`Config::load`], then `checks` on the config as read (even when it has problems
    /// of its own, so that one run names them all).
    pub fn load_checked(path: Option<&Path>, checks: &[Check]) -> Result<Config, Vec<Problem>> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::load_with_env_checked(path, &env, checks)
    }

    /// Loads from an optional file plus the given `CERBERUS_*` variables (tests pass their own).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, Vec<Problem>> {
        Config::load_with_env_checked(path, env, &[])
    }

    /// [`Config::load_with_env`] plus `checks`, as in [`Config::load_checked`].
    pub fn load_with_env_checked(
        path: Option<&Path>,
        env: &[(String, String)],
        checks: &[Check],
    ) -> Result<Config, Vec<Problem>> {
        let map = match path {
            None => Mapping::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    vec![Problem {
                        key: "config".into(),
                        message: format!("cannot read {}: {e}", p.display()),
                    }]
                })?;
                parse_yaml(&text)?
            }
        };
        Config::from_mapping_with_env(map, env, checks)
    }

    /// YAML `text` (a config file's) plus the given `CERBERUS_*` variables, read without
    /// the file system or the process environment (the config fuzz target's entry).
    pub fn from_yaml_with_env(
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, Vec<Problem>> {
        Config::from_mapping_with_env(parse_yaml(text)?, env, &[])
    }

    fn from_mapping_with_env(
        mut map: Mapping,
        env: &[(String, String)],
        checks: &[Check],
    ) -> Result<Config, Vec<Problem>> {
        for (name, value) in env {
            let Some(key) = name.strip_prefix("CERBERUS_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // `engine.enabled` is CERBERUS_ENGINE_ENABLED.
            let Some(&(key, kind)) = KEYS.iter().find(|(k, _)| k.replace('.', "_") == key) else {
                continue;
            };
            let v = match kind {
                Kind::List => Value::Sequence(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ),
                _ => Value::String(value.clone()),
            };
            map.insert(Value::String(key.into()), v);
        }
        Reader::new(map).finish(checks)
    }
}

fn parse_yaml(text: &str) -> Result<Mapping, Vec<Problem>> {
    let problem = |message: String| {
        vec![Problem {
            key: "config".into(),
            message,
        }]
    };
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| problem(format!("invalid YAML: {e}")))?;
    match value {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(m) => Ok(flatten_sections(m)),
        _ => Err(problem(
            "the config must be a YAML mapping of key: value".into(),
        )),
    }
}

/// `engine: {enabled: true}` becomes `engine.enabled: true`. A section that is not a
/// mapping stays as it is (and is reported as such).
fn flatten_sections(map: Mapping) -> Mapping {
    let mut out = Mapping::new();
    for (k, v) in map {
        let section = k.as_str().filter(|name| SECTIONS.contains(name));
        match (section, v) {
            (Some(_), Value::Null) => {}
            (Some(name), Value::Mapping(inner)) => {
                for (ik, iv) in inner {
                    let sub = match ik.as_str() {
                        Some(sub) => sub.to_string(),
                        None => format!("{ik:?}"),
                    };
                    out.insert(Value::String(format!("{name}.{sub}")), iv);
                }
            }
            (_, v) => {
                out.insert(k, v);
            }
        }
    }
    out
}

/// Where the snapshot segments go: `snapshot_dir: PATH`, `off`, or (default) the
/// socket's directory + `/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SnapshotDir {
    #[default]
    NextToSocket,
    Path(PathBuf),
    Off,
}

impl Config {
    /// The snapshot segment directory, None when switched off.
    pub fn snapshot_path(&self) -> Option<PathBuf> {
        match &self.snapshot_dir {
            SnapshotDir::Off => None,
            SnapshotDir::Path(p) => Some(p.clone()),
            SnapshotDir::NextToSocket => Some(
                self.socket
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("snapshot"),
            ),
        }
    }
}
