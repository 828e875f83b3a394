//! Configuration: a YAML file whose keys follow CrowdSec's own bouncers, every key also
//! settable as `CERBERUS_<KEY>`, checked as a whole so that `cerberus check` lists every
//! problem at once, each naming its key.

mod secrets;

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
    /// LAPI base URL; `None` is standalone mode (decisions only from the admin API).
    pub api_url: Option<String>,
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
    /// The files secrets were read from, by key (`api_key_file`, ...), for
    /// [`Config::exposed_secret_files`].
    pub secret_files: Vec<(String, PathBuf)>,
}

impl Default for Config {
    fn default() -> Self {
        let data_dir = PathBuf::from("./cerberus-data");
        Config {
            api_url: None,
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
            usage_metrics_interval: Duration::from_secs(15 * 60),
            engine: EngineConfig::default(),
            console_engine_config: None,
            console_cscli_bin: PathBuf::from("cscli"),
            heartbeat_interval: Duration::from_secs(5 * 60),
            secret_files: Vec::new(),
        }
    }
}

impl Config {
    /// Standalone unless an `api_url` is set or the engine is managed.
    pub fn standalone(&self) -> bool {
        self.api_url.is_none() && !self.engine.enabled
    }

    /// `standalone`, `lapi` (an external LAPI) or `engine` (the managed engine's LAPI).
    pub fn mode(&self) -> &'static str {
        if self.engine.enabled {
            "engine"
        } else if self.api_url.is_some() {
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
        let mut map = match path {
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

/// Reads typed values out of the mapping, collecting every problem.
struct Reader {
    map: Mapping,
    problems: Vec<Problem>,
    secret_files: Vec<(String, PathBuf)>,
}

impl Reader {
    fn new(map: Mapping) -> Reader {
        Reader {
            map,
            problems: Vec::new(),
            secret_files: Vec::new(),
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.raw(key)?.clone() {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.problem(key, "expected a single value (a string)");
                None
            }
        }
    }

    fn list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.raw(key)?.clone() {
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        Value::Number(n) => out.push(n.to_string()),
                        _ => {
                            self.problem(key, "expected a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Value::String(s) => Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
            _ => {
                self.problem(key, "expected a list of strings");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.raw(key)?.clone() {
            Value::Bool(b) => Some(b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Some(true),
                "false" | "no" | "0" | "off" => Some(false),
                _ => {
                    self.problem(key, format!("expected true or false, got {s:?}"));
                    None
                }
            },
            _ => {
                self.problem(key, "expected true or false");
                None
            }
        }
    }

    fn duration(&mut self, key: &str) -> Option<Duration> {
        let text = self.string(key)?;
        match parse_config_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(key, format!("{text:?} must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.string(key).map(PathBuf::from)
    }

    /// A secret given inline or as `KEY_file`; both at once is a problem.
    fn secret(&mut self, key: &str) -> Option<String> {
        let file_key = format!("{key}_file");
        let inline = self.string(key);
        let file = self.path(&file_key);
        if let Some(p) = &file {
            self.secret_files.push((file_key.clone(), p.clone()));
        }
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if text.trim().is_empty() => {
                    self.problem(&file_key, format!("{} is empty", path.display()));
                    None
                }
                Ok(text) => Some(text.trim().to_string()),
                Err(e) => {
                    self.problem(&file_key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn readable_file(&mut self, key: &str, path: &Option<PathBuf>) {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                self.problem(key, format!("cannot read {}: {e}", p.display()));
            }
        }
    }

    fn finish(mut self, checks: &[Check]) -> Result<Config, Vec<Problem>> {
        let mut unknown: Vec<String> = Vec::new();
        for k in self.map.keys() {
            match k.as_str() {
                Some(name) if KEYS.iter().any(|(known, _)| *known == name) => {}
                Some(name) => unknown.push(name.to_string()),
                None => unknown.push(format!("{k:?}")),
            }
        }
        for name in unknown {
            if SECTIONS.contains(&name.as_str()) {
                self.problem(
                    &name,
                    format!(
                        "expected a section of key: value lines, e.g. {name}:\n  enabled: true"
                    ),
                );
                continue;
            }
            let hint = KEYS
                .iter()
                .map(|(k, _)| *k)
                .find(|k| similar(k, &name))
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            self.problem(&name, format!("unknown key{hint}"));
        }

        let mut c = Config::default();
        if let Some(url) = self.string("api_url") {
            match url.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() => {
                    c.api_url = Some(url.trim_end_matches('/').to_string())
                }
                _ => self.problem(
                    "api_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ),
            }
        }
        c.api_key = self.secret("api_key");
        c.cert_path = self.path("cert_path");
        c.key_path = self.path("key_path");
        c.ca_cert_path = self.path("ca_cert_path");
        let (cert, key, ca) = (
            c.cert_path.clone(),
            c.key_path.clone(),
            c.ca_cert_path.clone(),
        );
        self.readable_file("cert_path", &cert);
        self.readable_file("key_path", &key);
        self.readable_file("ca_cert_path", &ca);
        if cert.is_some() != key.is_some() {
            let missing = if cert.is_some() {
                "key_path"
            } else {
                "cert_path"
            };
            self.problem(
                missing,
                "cert_path and key_path go together (TLS client certificate)",
            );
        }
        if c.api_url.is_some() && c.api_key.is_none() && cert.is_none() {
            self.problem(
                "api_key",
                "api_url is set but there is no api_key, api_key_file or cert_path/key_path \
                 (create a key with: cscli bouncers add cerberus)",
            );
        }
        if let Some(v) = self.boolean("insecure_skip_verify") {
            c.insecure_skip_verify = v;
        }
        if let Some(d) = self.duration("update_frequency") {
            c.update_frequency = d;
        }
        if let Some(v) = self.list("scopes") {
            c.scopes = v.iter().map(|s| s.to_ascii_lowercase()).collect();
        }
        if let Some(v) = self.list("origins") {
            c.origins = v;
        }
        if let Some(v) = self.list("scenarios_containing") {
            c.scenarios_containing = v;
        }
        if let Some(v) = self.list("scenarios_not_containing") {
            c.scenarios_not_containing = v;
        }
        if let Some(v) = self.list("supported_decisions_types") {
            c.supported_decisions_types = v.iter().map(|s| s.to_ascii_lowercase()).collect();
        }
        c.machine_id = self.string("machine_id");
        c.machine_password = self.secret("machine_password");
        if c.machine_id.is_some() != c.machine_password.is_some() {
            let missing = if c.machine_id.is_some() {
                "machine_password"
            } else {
                "machine_id"
            };
            self.problem(
                missing,
                "machine_id and machine_password go together (a LAPI watcher)",
            );
        }
        if let Some(dir) = self.path("data_dir") {
            c.data_dir = dir;
        }
        c.socket = self
            .path("socket")
            .unwrap_or_else(|| c.data_dir.join("cerberus.sock"));
        match self.string("snapshot_dir") {
            Some(v) if v == "off" => c.snapshot_dir = SnapshotDir::Off,
            Some(_) => {
                c.snapshot_dir = SnapshotDir::Path(self.path("snapshot_dir").unwrap_or_default())
            }
            None => {}
        }
        if let Some(mode) = self.string("socket_mode") {
            match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
                Ok(m) if m <= 0o777 => c.socket_mode = m,
                _ => self.problem(
                    "socket_mode",
                    format!("{mode:?} is not an octal mode like 0660"),
                ),
            }
        }
        if let Some(s) = self.string("socket_max_connections") {
            match s.parse::<usize>() {
                Ok(n) if (1..=1_000_000).contains(&n) => c.socket_max_connections = n,
                _ => self.problem(
                    "socket_max_connections",
                    format!("{s:?} is not a number of connections from 1 to 1000000"),
                ),
            }
        }
        if let Some(d) = self.duration("socket_idle_timeout") {
            if d < Duration::from_secs(60) {
                self.problem(
                    "socket_idle_timeout",
                    "must be at least 60s (the socket protocol promises clients 60s)",
                );
            } else {
                c.socket_idle_timeout = d;
            }
        }
        for key in ["forward_auth_listen", "admin_listen"] {
            if let Some(v) = self.string(key) {
                match Listen::parse(&v) {
                    Ok(l) if key == "admin_listen" => c.admin_listen = l,
                    Ok(l) => c.forward_auth_listen = l,
                    Err(e) => self.problem(key, e),
                }
            }
        }
        self.http_limits(&mut c);
        c.admin_token = self.secret("admin_token");
        if let Some(p) = secrets::token_strength(&c.admin_listen, c.admin_token.as_deref()) {
            self.problems.push(p);
        }
        if let Listen::Tcp(addr) = &c.admin_listen {
            if c.admin_token.is_none() && !is_loopback(addr) {
                self.problem(
                    "admin_listen",
                    format!(
                        "{addr} can be reached from other machines, so the admin API needs a \
                         token you chose: set admin_token or admin_token_file (or listen on \
                         127.0.0.1)"
                    ),
                );
            }
        }
        if let Some(url) = self.string("capi_url") {
            if url.starts_with("http://") || url.starts_with("https://") {
                c.capi_url = url.trim_end_matches('/').to_string();
            } else {
                self.problem(
                    "capi_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                );
            }
        }
        c.geoip_database = self.path("geoip_database");
        if let Some(p) = &c.geoip_database {
            if !p.is_file() {
                self.problem(
                    "geoip_database",
                    format!(
                        "{} is not a file (a MaxMind .mmdb such as GeoLite2-Country.mmdb)",
                        p.display()
                    ),
                );
            }
        }
        if let Some(items) = self.list("trusted_proxies") {
            for item in items {
                let parsed = item
                    .parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(net) => c.trusted_proxies.push(net.trunc()),
                    Err(_) => self.problem(
                        "trusted_proxies",
                        format!("{item:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                    ),
                }
            }
        }
        if let Some(h) = self.string("client_ip_header") {
            if h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                c.client_ip_header = h;
            } else {
                self.problem(
                    "client_ip_header",
                    format!("{h:?} is not an HTTP header name"),
                );
            }
        }
        if let Some(p) = self.string("on_lapi_unreachable") {
            match p.to_ascii_lowercase().as_str() {
                "keep" => c.on_lapi_unreachable = UnreachablePolicy::Keep,
                "open" => c.on_lapi_unreachable = UnreachablePolicy::Open,
                "closed" => c.on_lapi_unreachable = UnreachablePolicy::Closed,
                _ => self.problem(
                    "on_lapi_unreachable",
                    format!("{p:?} is not one of keep, open, closed"),
                ),
            }
        }
        if let Some(d) = self.duration("stale_after") {
            c.stale_after = d;
        }
        if let Some(s) = self.string("ban_status") {
            match s.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => c.ban_status = code,
                _ => self.problem(
                    "ban_status",
                    format!("{s:?} is not an HTTP status from 400 to 599"),
                ),
            }
        }
        c.ban_template = self.path("ban_template");
        let template = c.ban_template.clone();
        self.readable_file("ban_template", &template);
        if let Some(f) = self.string("log_format") {
            match f.to_ascii_lowercase().as_str() {
                "text" => c.log_format = LogFormat::Text,
                "json" => c.log_format = LogFormat::Json,
                _ => self.problem("log_format", format!("{f:?} is not text or json")),
            }
        }
        if let Some(l) = self.string("log_level") {
            match l.to_ascii_lowercase().as_str() {
                "trace" | "debug" | "info" | "warn" | "error" => {
                    c.log_level = l.to_ascii_lowercase()
                }
                _ => self.problem(
                    "log_level",
                    format!("{l:?} is not one of trace, debug, info, warn, error"),
                ),
            }
        }
        if let Some(d) = self.duration("lapi_timeout") {
            c.lapi_timeout = d;
        }
        if let Some(s) = self.string("lapi_max_body") {
            match parse_size(&s) {
                Some(n) if n > 0 => c.lapi_max_body = n,
                _ => self.problem(
                    "lapi_max_body",
                    format!("{s:?} is not a size like 512MiB or 1048576"),
                ),
            }
        }
        if let Some(d) = self.duration("lapi_retry_max") {
            c.lapi_retry_max = d;
        }
        if let Some(text) = self.string("usage_metrics_interval") {
            match parse_config_duration(&text) {
                Ok(d) if d.is_zero() || d >= MIN_USAGE_METRICS_INTERVAL => {
                    c.usage_metrics_interval = d
                }
                Ok(_) => self.problem(
                    "usage_metrics_interval",
                    format!(
                        "{text:?} is too short: use at least 10s (15m is usual), or 0s to send no usage metrics"
                    ),
                ),
                Err(e) => self.problem(
                    "usage_metrics_interval",
                    format!("{e}; 0s sends no usage metrics"),
                ),
            }
        }
        self.engine(&mut c);
        c.console_engine_config = self.path("console_engine_config");
        let engine = c.console_engine_config.clone();
        self.readable_file("console_engine_config", &engine);
        if let Some(bin) = self.path("console_cscli_bin") {
            c.console_cscli_bin = bin;
        }
        if let Some(text) = self.string("heartbeat_interval") {
            match parse_config_duration(&text) {
                Ok(d) if d.is_zero() || d >= MIN_HEARTBEAT_INTERVAL => c.heartbeat_interval = d,
                Ok(_) => self.problem(
                    "heartbeat_interval",
                    "must be at least 1s (minutes for the real central API), or 0s for no poller",
                ),
                Err(e) => self.problem(
                    "heartbeat_interval",
                    format!("{e}; 0s turns the heartbeat poller off"),
                ),
            }
        }
        self.check_dirs(&c);
        c.secret_files = std::mem::take(&mut self.secret_files);
        for check in checks {
            self.problems.extend(check(&c));
        }
        if self.problems.is_empty() {
            Ok(c)
        } else {
            Err(self.problems)
        }
    }

    /// The `engine` section; with the engine on, its binaries and config must be usable.
    fn engine(&mut self, c: &mut Config) {
        if let Some(v) = self.boolean("engine.enabled") {
            c.engine.enabled = v;
        }
        if let Some(p) = self.path("engine.crowdsec_bin") {
            c.engine.crowdsec_bin = p;
        }
        if let Some(p) = self.path("engine.cscli_bin") {
            c.engine.cscli_bin = p;
        }
        if let Some(p) = self.path("engine.config_file") {
            c.engine.config_file = p;
        }
        if let Some(d) = self.duration("engine.stop_grace") {
            if d > Duration::from_secs(600) {
                self.problem("engine.stop_grace", "must be at most 10m");
            } else {
                c.engine.stop_grace = d;
            }
        }
        if let Some(url) = self.string("engine.hub_url") {
            if url.starts_with("http://") || url.starts_with("https://") {
                c.engine.hub_url = url;
            } else {
                self.problem(
                    "engine.hub_url",
                    format!("{url:?} is not an http:// or https:// URL of a hub .index.json"),
                );
            }
        }
        if !c.engine.enabled {
            return;
        }
        if c.api_url.is_some() {
            self.problem(
                "api_url",
                "engine.enabled is true, so cerberus pulls from the managed engine's LAPI \
                 (api.server.listen_uri of engine.config_file) with a bouncer key of its own; \
                 remove api_url and api_key, or set engine.enabled: false to use this LAPI",
            );
        }
    }

    /// Connection caps and timeouts of the HTTP doors (forward_auth, admin).
    fn http_limits(&mut self, c: &mut Config) {
        for (key, default) in [
            (
                "forward_auth_max_connections",
                c.forward_auth_max_connections,
            ),
            ("admin_max_connections", c.admin_max_connections),
        ] {
            let n = match self.string(key) {
                None => default,
                Some(s) => match s.parse::<usize>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => n,
                    _ => {
                        self.problem(
                            key,
                            format!("{s:?} is not a number of connections from 1 to 1000000"),
                        );
                        default
                    }
                },
            };
            match key {
                "admin_max_connections" => c.admin_max_connections = n,
                _ => c.forward_auth_max_connections = n,
            }
        }
        for key in [
            "http_header_timeout",
            "http_write_timeout",
            "http_idle_timeout",
        ] {
            let Some(d) = self.duration(key) else {
                continue;
            };
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                self.problem(key, "must be from 1s to 1h");
                continue;
            }
            match key {
                "http_header_timeout" => c.http_header_timeout = d,
                "http_write_timeout" => c.http_write_timeout = d,
                _ => c.http_idle_timeout = d,
            }
        }
    }

    /// `data_dir` is created at start, so its parent must exist; a socket outside it
    /// needs its own directory.
    fn check_dirs(&mut self, c: &Config) {
        if !c.data_dir.is_dir() {
            let parent = c.data_dir.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                self.problem(
                    "data_dir",
                    format!(
                        "{} does not exist and its parent directory is missing",
                        c.data_dir.display()
                    ),
                );
            }
        }
        if !c.socket.starts_with(&c.data_dir) {
            if let Some(parent) = c.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    self.problem(
                        "socket",
                        format!("directory {} does not exist", parent.display()),
                    );
                }
            }
        }
        if let Listen::Unix(path) = &c.forward_auth_listen {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() && !parent.starts_with(&c.data_dir) {
                    self.problem(
                        "forward_auth_listen",
                        format!("directory {} does not exist", parent.display()),
                    );
                }
            }
        }
    }
}

/// Close enough to be a typo: at most two edits apart (case and `-` ignored).
fn similar(known: &str, given: &str) -> bool {
    let given: Vec<char> = given
        .to_ascii_lowercase()
        .replace('-', "_")
        .chars()
        .collect();
    let known: Vec<char> = known.chars().collect();
    let mut prev: Vec<usize> = (0..=given.len()).collect();
    for (i, k) in known.iter().enumerate() {
        let mut cur = vec![i + 1; given.len() + 1];
        for (j, g) in given.iter().enumerate() {
            let cost = usize::from(k != g);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[given.len()] <= 2
}

/// `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, Vec<Problem>> {
        Reader::new(parse_yaml(yaml).unwrap()).finish(&[])
    }

    #[test]
    fn snapshot_dir_follows_the_socket_unless_set() {
        let c = load("socket: /tmp/cerberus.sock\n").unwrap();
        assert_eq!(c.snapshot_path(), Some(PathBuf::from("/tmp/snapshot")));
        let c = load("snapshot_dir: /dev/shm/cerberus\n").unwrap();
        assert_eq!(c.snapshot_path(), Some(PathBuf::from("/dev/shm/cerberus")));
        assert_eq!(load("snapshot_dir: off\n").unwrap().snapshot_path(), None);
        let c = Config {
            socket: PathBuf::from("/tmp/x/cerberus.sock"),
            ..Config::default()
        };
        assert_eq!(c.snapshot_path(), Some(PathBuf::from("/tmp/x/snapshot")));
    }

    #[test]
    fn usage_metrics_interval() {
        assert_eq!(
            load("").unwrap().usage_metrics_interval,
            Duration::from_secs(900)
        );
        assert_eq!(
            load("usage_metrics_interval: 0s\n")
                .unwrap()
                .usage_metrics_interval,
            Duration::ZERO
        );
        assert_eq!(
            load("usage_metrics_interval: 1m30s\n")
                .unwrap()
                .usage_metrics_interval,
            Duration::from_secs(90)
        );
        for (bad, says) in [
            ("2s", "at least 10s"),
            ("soon", "0s sends no usage metrics"),
            ("-5m", "0s sends no usage metrics"),
        ] {
            let problems = load(&format!("usage_metrics_interval: {bad}\n")).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "usage_metrics_interval");
            assert!(problems[0].message.contains(says), "{}", problems[0]);
        }
    }

    #[test]
    fn console_keys() {
        let c = load("").unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(300));
        assert_eq!(c.console_engine_config, None);
        assert_eq!(c.console_cscli_bin, PathBuf::from("cscli"));
        let c = load("heartbeat_interval: 0s\nconsole_cscli_bin: /usr/bin/cscli\n").unwrap();
        assert_eq!(c.heartbeat_interval, Duration::ZERO);
        assert_eq!(c.console_cscli_bin, PathBuf::from("/usr/bin/cscli"));
        let problems =
            load("heartbeat_interval: 500ms\nconsole_engine_config: /nonexistent/config.yaml\n")
                .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["console_engine_config", "heartbeat_interval"]);
    }

    #[test]
    fn defaults_are_standalone() {
        let c = load("").unwrap();
        assert!(c.standalone());
        assert_eq!(c.update_frequency, Duration::from_secs(10));
        assert_eq!(c.socket, PathBuf::from("./cerberus-data/cerberus.sock"));
        assert_eq!(c.forward_auth_listen, Listen::Tcp("127.0.0.1:7420".into()));
        assert_eq!(c.admin_listen, Listen::Tcp("127.0.0.1:8088".into()));
        assert_eq!(c.ban_status, 403);
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "api_url: http://127.0.0.1:8080\napi_key: a\nupdate_frequency: 10s\n",
        )
        .unwrap();
        let env = vec![
            ("CERBERUS_UPDATE_FREQUENCY".to_string(), "2s".to_string()),
            (
                "CERBERUS_ORIGINS".to_string(),
                "crowdsec, cscli".to_string(),
            ),
            ("CERBERUS_API_KEY".to_string(), "12345".to_string()),
            (
                "CERBERUS_INSECURE_SKIP_VERIFY".to_string(),
                "true".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::load_with_env(Some(&file), &env).unwrap();
        assert_eq!(c.update_frequency, Duration::from_secs(2));
        assert_eq!(c.origins, vec!["crowdsec", "cscli"]);
        assert_eq!(c.api_key.as_deref(), Some("12345"));
        assert!(c.insecure_skip_verify);
    }

    #[test]
    fn every_problem_names_its_key() {
        let problems = load(
            "api_url: http://127.0.0.1:8080\n\
             update_frequncy: 10s\n\
             stale_after: soon\n\
             trusted_proxies: [10.0.0.0/33]\n\
             on_lapi_unreachable: maybe\n\
             ban_status: 200\n\
             data_dir: /nonexistent-parent/x/data\n\
             admin_listen: nowhere\n\
             cert_path: /nonexistent/cert.pem\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "update_frequncy",
            "stale_after",
            "trusted_proxies",
            "on_lapi_unreachable",
            "ban_status",
            "data_dir",
            "admin_listen",
            "cert_path",
            "key_path",
        ] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        let typo = problems
            .iter()
            .find(|p| p.key == "update_frequncy")
            .unwrap();
        assert!(
            typo.message.contains("did you mean update_frequency"),
            "{typo}"
        );
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let problems = load("admin_listen: 0.0.0.0:8088\n").unwrap_err();
        assert_eq!(problems[0].key, "admin_listen");
        assert!(
            problems[0].message.contains("admin_token"),
            "{}",
            problems[0]
        );
        let long = "t0ken-long-enough-t0ken-long-enough";
        assert!(load(&format!(
            "admin_listen: 0.0.0.0:8088\nadmin_token: {long}\n"
        ))
        .is_ok());
        // Too short off loopback; any length on loopback.
        let problems = load("admin_listen: 0.0.0.0:8088\nadmin_token: a\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "admin_token");
        assert!(
            problems[0].message.contains("at least 32"),
            "{}",
            problems[0]
        );
        assert!(load("admin_listen: 127.0.0.1:8088\nadmin_token: a\n").is_ok());
        assert!(load("admin_listen: localhost:8088\n").is_ok());
        assert!(load("admin_listen: \"[::1]:8088\"\n").is_ok());
        let problems = load("capi_url: api.crowdsec.net\n").unwrap_err();
        assert_eq!(problems[0].key, "capi_url");
    }

    #[test]
    fn geoip_database_must_be_a_file() {
        let problems = load("geoip_database: /nonexistent/country.mmdb\n").unwrap_err();
        assert_eq!(problems[0].key, "geoip_database");
        assert!(
            problems[0].message.contains("not a file"),
            "{}",
            problems[0].message
        );
        assert_eq!(load("").unwrap().geoip_database, None);
    }

    #[test]
    fn api_url_needs_credentials() {
        let problems = load("api_url: http://127.0.0.1:8080\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "api_key");
        let problems = load("api_url: ftp://x\napi_key: k\n").unwrap_err();
        assert_eq!(problems[0].key, "api_url");
    }

    #[test]
    fn key_file_must_be_readable_and_exclusive() {
        let problems = load("api_url: http://x:1\napi_key_file: /nonexistent/key\n").unwrap_err();
        assert!(
            problems.iter().any(|p| p.key == "api_key_file"),
            "{problems:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "secret\n").unwrap();
        let c = load(&format!(
            "api_url: http://x:1\napi_key_file: {}\n",
            f.display()
        ))
        .unwrap();
        assert_eq!(c.api_key.as_deref(), Some("secret"));
        let problems = load(&format!("api_key: a\napi_key_file: {}\n", f.display())).unwrap_err();
        assert_eq!(problems[0].key, "api_key");
    }

    #[test]
    fn http_limits() {
        let c = load("").unwrap();
        assert_eq!(
            (c.forward_auth_max_connections, c.admin_max_connections),
            (1024, 64)
        );
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_write_timeout, Duration::from_secs(10));
        assert_eq!(c.http_idle_timeout, Duration::from_secs(60));
        let c = load(
            "forward_auth_max_connections: 5\nadmin_max_connections: 2\n\
             http_header_timeout: 3s\nhttp_write_timeout: 4s\nhttp_idle_timeout: 2m\n",
        )
        .unwrap();
        assert_eq!(
            (c.forward_auth_max_connections, c.admin_max_connections),
            (5, 2)
        );
        assert_eq!(
            (
                c.http_header_timeout,
                c.http_write_timeout,
                c.http_idle_timeout
            ),
            (
                Duration::from_secs(3),
                Duration::from_secs(4),
                Duration::from_secs(120)
            )
        );
        let problems = load(
            "forward_auth_max_connections: 0\nadmin_max_connections: x\n\
             http_header_timeout: 2h\nhttp_write_timeout: 500ms\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "forward_auth_max_connections",
                "admin_max_connections",
                "http_header_timeout",
                "http_write_timeout"
            ]
        );
    }

    #[test]
    fn socket_limits() {
        let c = load("").unwrap();
        assert_eq!(c.socket_max_connections, 1024);
        assert_eq!(c.socket_idle_timeout, Duration::from_secs(60));
        let c = load("socket_max_connections: 16\nsocket_idle_timeout: 5m\n").unwrap();
        assert_eq!(c.socket_max_connections, 16);
        assert_eq!(c.socket_idle_timeout, Duration::from_secs(300));
        let problems = load("socket_max_connections: 0\nsocket_idle_timeout: 10s\n").unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["socket_max_connections", "socket_idle_timeout"]);
        let env = vec![(
            "CERBERUS_SOCKET_MAX_CONNECTIONS".to_string(),
            "many".to_string(),
        )];
        let problems = Config::load_with_env(None, &env).unwrap_err();
        assert_eq!(problems[0].key, "socket_max_connections");
    }

    /// A usable engine config and executable stand-ins for the binaries, in `dir`.
    fn engine_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let bins: Vec<PathBuf> = ["crowdsec", "cscli"]
            .iter()
            .map(|name| {
                let p = dir.join(name);
                std::fs::write(&p, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
                p
            })
            .collect();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            "api:\n  client:\n    credentials_path: creds.yaml\n  server:\n    listen_uri: 127.0.0.1:8080\n",
        )
        .unwrap();
        (bins[0].clone(), bins[1].clone(), config)
    }

    #[test]
    fn engine_section_defaults_and_values() {
        let c = load("").unwrap();
        assert_eq!(c.engine, EngineConfig::default());
        assert!(!c.engine.enabled);
        assert_eq!(c.engine.stop_grace, Duration::from_secs(10));
        // Off: the default paths need not exist.
        let c = load("engine:\n  enabled: false\n  stop_grace: 3s\n").unwrap();
        assert_eq!(c.engine.stop_grace, Duration::from_secs(3));

        let dir = tempfile::tempdir().unwrap();
        let (crowdsec, cscli, config) = engine_files(dir.path());
        let c = load(&format!(
            "engine:\n  enabled: true\n  crowdsec_bin: {}\n  cscli_bin: {}\n  config_file: {}\n",
            crowdsec.display(),
            cscli.display(),
            config.display()
        ))
        .unwrap();
        assert!(c.engine.enabled);
        assert_eq!(c.engine.crowdsec_bin, crowdsec);
        assert_eq!(c.engine.cscli_bin, cscli);
        assert_eq!(c.engine.config_file, config);
    }

    #[test]
    fn engine_keys_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (crowdsec, cscli, config) = engine_files(dir.path());
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "engine:\n  enabled: false\n  stop_grace: 3s\n").unwrap();
        let env: Vec<(String, String)> = [
            ("CERBERUS_ENGINE_ENABLED", "true".to_string()),
            (
                "CERBERUS_ENGINE_CROWDSEC_BIN",
                crowdsec.display().to_string(),
            ),
            ("CERBERUS_ENGINE_CSCLI_BIN", cscli.display().to_string()),
            ("CERBERUS_ENGINE_CONFIG_FILE", config.display().to_string()),
            ("CERBERUS_ENGINE_STOP_GRACE", "20s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let c = Config::load_with_env(Some(&file), &env).unwrap();
        assert!(c.engine.enabled);
        assert_eq!(c.engine.crowdsec_bin, crowdsec);
        assert_eq!(c.engine.config_file, config);
        assert_eq!(c.engine.stop_grace, Duration::from_secs(20));
    }

    #[test]
    fn engine_problems_name_their_keys() {
        let problems = load(
            "api_url: http://127.0.0.1:8080\napi_key: k\n\
             engine:\n  enabled: true\n  crowdsec_bin: /nonexistent/crowdsec\n  \
             cscli_bin: /nonexistent/cscli\n  config_file: /nonexistent/config.yaml\n  \
             stop_grace: forever\n  enable: true\n",
        )
        .unwrap_err();
        let find = |key: &str| {
            problems
                .iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("{key} missing from {problems:?}"))
                .message
                .clone()
        };
        // The binaries and the engine config are the engine's to check
        // (crate::engine::config::check); this file's reading leaves them alone.
        assert!(problems.iter().all(|p| p.key != "engine.crowdsec_bin"));
        assert!(find("engine.stop_grace").contains("forever"));
        assert!(find("engine.enable").contains("did you mean engine.enabled?"));
        assert!(find("api_url").contains("engine.enabled is true"));

        let problems = load("engine: yes\n").unwrap_err();
        assert_eq!(problems[0].key, "engine");
        assert!(problems[0].message.contains("section"), "{}", problems[0]);
    }

    #[test]
    fn sizes_and_listeners() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1.5GiB"), None);
        assert_eq!(
            Listen::parse("unix:/tmp/a.sock"),
            Ok(Listen::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            Listen::parse("[::1]:7420"),
            Ok(Listen::Tcp("[::1]:7420".into()))
        );
        assert_eq!(Listen::parse("off"), Ok(Listen::Off));
        assert!(Listen::parse("7420").is_err());
    }
}
