//! The managed engine's own config file (CrowdSec's `config.yaml`): what cerberus reads
//! from it (the LAPI address, the agent's credentials, logging, online credentials), and
//! where its binaries are.

use crate::config::{Config, Problem};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The engine's part of `cerberus check` (a [`crate::config::Check`]): with the engine on,
/// its binaries must run and its config file must name what cerberus needs.
pub fn check(c: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !c.engine.enabled {
        return problems;
    }
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            key: key.into(),
            message,
        })
    };
    for (key, path) in [
        ("engine.crowdsec_bin", &c.engine.crowdsec_bin),
        ("engine.cscli_bin", &c.engine.cscli_bin),
    ] {
        if let Err(e) = resolve_binary(path) {
            problem(key, format!("{}: {e}", path.display()));
        }
    }
    if let Err(e) = read_engine_config(&c.engine.config_file) {
        problem(
            "engine.config_file",
            format!("{}: {e}", c.engine.config_file.display()),
        );
    }
    problems
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
    /// `api.server.online_client.credentials_path`: the engine's central API (CAPI)
    /// credentials, written by `cscli capi register`. `None` when the config names none.
    pub online_credentials: Option<PathBuf>,
}

/// Whether the engine runs with its central API (the community blocklist and console
/// blocklist subscriptions), and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CapiPlan {
    pub enabled: bool,
    /// Why the community blocklist is off, with the fix.
    pub reason: Option<String>,
    pub credentials_path: Option<PathBuf>,
    /// When the central API did not answer at the engine's start: why, classified
    /// ([`crate::outbound`]), and its fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<crate::outbound::Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The `url` of an online credentials file (`online_api_credentials.yaml`), if it has one.
pub fn online_url(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let creds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).ok()?;
    creds.get("url")?.as_str().map(str::to_string)
}

impl EngineConfigInfo {
    /// With online credentials that exist (a file with `url`, `login` and `password`),
    /// the engine runs with its central API; otherwise with `-no-capi`, and the reason.
    pub fn capi_plan(&self, config: &Path) -> CapiPlan {
        let off = |reason: String| CapiPlan {
            enabled: false,
            reason: Some(reason),
            credentials_path: self.online_credentials.clone(),
            cause: None,
            fix: None,
        };
        let Some(path) = &self.online_credentials else {
            return off(format!(
                "{} names no api.server.online_client.credentials_path; add one (e.g. \
                 /etc/crowdsec/online_api_credentials.yaml) and register with \
                 `cerberus capi-register`",
                config.display()
            ));
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return off(format!(
                    "the online credentials {} do not exist (CrowdSec refuses to start while \
                     its config names a missing one); register the engine with \
                     `cerberus capi-register` (POST /api/v1/cerberus/crowdsec/capi/register)",
                    path.display()
                ))
            }
            Err(e) => return off(format!("cannot read {}: {e}", path.display())),
        };
        let creds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_default();
        let has = |k: &str| {
            creds
                .get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|v| !v.is_empty())
        };
        if !(has("url") && has("login") && has("password")) {
            return off(format!(
                "{} lacks url, login or password; register again with \
                 `cerberus capi-register`",
                path.display()
            ));
        }
        CapiPlan {
            enabled: true,
            reason: None,
            credentials_path: Some(path.clone()),
            cause: None,
            fix: None,
        }
    }
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
    let online_credentials =
        text(&["api", "server", "online_client", "credentials_path"])?.map(absolute);
    Ok(EngineConfigInfo {
        listen_uri,
        lapi_url,
        credentials_path,
        daemonize,
        log_file,
        online_credentials,
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
    fn cerberus_check_names_the_engine_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cerberus.yaml");
        let load = |yaml: &str| {
            std::fs::write(&file, yaml).unwrap();
            Config::load_with_env_checked(Some(&file), &[], &[check])
        };
        let problems = load(
            "engine:\n  enabled: true\n  crowdsec_bin: /nonexistent/crowdsec\n  \
             cscli_bin: /nonexistent/cscli\n  config_file: /nonexistent/config.yaml\n  \
             stop_grace: forever\n",
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
        assert!(find("engine.crowdsec_bin").contains("/nonexistent/crowdsec: no such file"));
        assert!(find("engine.cscli_bin").contains("/nonexistent/cscli"));
        assert!(find("engine.config_file").contains("/nonexistent/config.yaml: cannot read it"));
        // The config file's own problems come in the same answer.
        assert!(find("engine.stop_grace").contains("forever"));

        let engine = dir.path().join("config.yaml");
        std::fs::write(&engine, "api:\n  server:\n    listen_uri: nowhere\n").unwrap();
        let problems = load(&format!(
            "engine:\n  enabled: true\n  crowdsec_bin: sh\n  cscli_bin: sh\n  config_file: {}\n",
            engine.display()
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "engine.config_file");
        assert!(
            problems[0].message.contains("listen_uri"),
            "{}",
            problems[0]
        );
        // With the engine off, its files are not looked at.
        assert!(load("engine:\n  enabled: false\n  crowdsec_bin: /nonexistent/x\n").is_ok());
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
