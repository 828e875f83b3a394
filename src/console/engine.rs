//! The engine's side of the console: its `config.yaml`, its online (central API)
//! credentials and the scenarios installed in its config dir.

use serde::Deserialize;
use std::path::{Path, PathBuf};

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
