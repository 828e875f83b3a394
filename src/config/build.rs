//! Builds a [`Config`] from the mapping: every known key read and checked, unknown keys
//! named with the closest known one, then the cross-key checks.

use super::reader::{similar, Reader};
use super::*;

impl Reader {
    pub(super) fn finish(mut self, checks: &[Check]) -> Result<Config, Vec<Problem>> {
        let mut unknown: Vec<String> = Vec::new();
        for k in self.map.keys() {
            match k.as_str() {
                Some(name) if KEYS.iter().any(|(known, _)| *known == name) => {}
                // An empty key (`"": 1`, or a tag alone as a key) is named as `""`.
                Some("") => unknown.push("\"\"".to_string()),
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
        // One URL, a YAML list, or a comma-separated string (CERBERUS_API_URL).
        let urls = self.list("api_url").unwrap_or_default();
        for (i, url) in urls.iter().enumerate() {
            let at = if urls.len() > 1 {
                format!("entry {} of {}: ", i + 1, urls.len())
            } else {
                String::new()
            };
            let url = url.trim_end_matches('/');
            match url.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() => {
                    if c.api_url.iter().any(|u| u == url) {
                        self.problem("api_url", format!("{at}{url:?} is listed twice"));
                    } else {
                        c.api_url.push(url.to_string());
                    }
                }
                _ => self.problem(
                    "api_url",
                    format!("{at}{url:?} is not an http:// or https:// URL"),
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
        if !c.api_url.is_empty() && c.api_key.is_none() && cert.is_none() {
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
        self.captcha(&mut c);
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
        if let Some(d) = self.duration("full_resync_interval") {
            c.full_resync_interval = d;
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
        self.appsec(&mut c);
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
        if !c.api_url.is_empty() {
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
