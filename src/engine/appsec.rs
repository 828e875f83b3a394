//! AppSec in engine mode: the managed engine's own AppSec listener (an acquisition
//! `source: appsec` in its `acquisition_path` or `acquisition_dir`) is used when
//! `appsec_url` is unset, with the engine's bouncer key once the supervisor has it.

use crate::appsec::Appsec;
use crate::lapi::Upstream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

/// CrowdSec's AppSec listener when `listen_addr` is not given
/// (crowdsec v1.7.8 `pkg/acquisition/modules/appsec/config.go`).
const DEFAULT_LISTEN: &str = "127.0.0.1:7422";

/// `http://ADDR/` of the first `source: appsec` acquisition of the engine config at
/// `config` (a wildcard host becomes loopback), or `None` when it has none.
pub fn listener(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).ok()?;
    let service = &v["crowdsec_service"];
    let mut files: Vec<PathBuf> = Vec::new();
    files.push(
        service["acquisition_path"]
            .as_str()
            .map_or_else(|| PathBuf::from("/etc/crowdsec/acquis.yaml"), PathBuf::from),
    );
    if let Some(dir) = service["acquisition_dir"].as_str() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut more: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            more.sort();
            files.extend(more);
        }
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| in_acquisition(&text))
}

/// The AppSec URL of one acquisition file (several YAML documents).
fn in_acquisition(text: &str) -> Option<String> {
    use serde::Deserialize;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let Ok(v) = serde_yaml_ng::Value::deserialize(doc) else {
            continue;
        };
        if v["source"].as_str() != Some("appsec") {
            continue;
        }
        let addr = v["listen_addr"].as_str().unwrap_or(DEFAULT_LISTEN).trim();
        let addr = match addr.rsplit_once(':') {
            Some(("0.0.0.0" | "", port)) => format!("127.0.0.1:{port}"),
            Some(("[::]", port)) => format!("[::1]:{port}"),
            _ => addr.to_string(),
        };
        return Some(format!("http://{addr}/"));
    }
    None
}

/// The AppSec client of this daemon: from `appsec_url` with `api_key`, or in engine
/// mode (no `appsec_url`) from the engine's acquisition with the engine's key, which
/// a task keeps current until shutdown. `None` when AppSec is off.
pub fn start(
    config: &crate::config::Config,
    engine: Option<&super::managed::EngineControl>,
    upstream: watch::Receiver<Upstream>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<Appsec>>> {
    let mut settings = config.appsec.clone();
    let Some(engine) = engine.filter(|_| settings.url.is_none()) else {
        return Appsec::from_config(&settings, config.api_key.clone());
    };
    settings.url = listener(&config.engine.config_file);
    let Some(appsec) = Appsec::from_config(&settings, None)? else {
        return Ok(None);
    };
    info!(
        "AppSec: the managed engine's acquisition has an AppSec listener ({})",
        appsec.url()
    );
    drop(follow_key(
        appsec.clone(),
        engine.supervisor.key_file(),
        upstream,
        shutdown,
    ));
    Ok(Some(appsec))
}

/// Gives `appsec` the engine's bouncer key (`key_file`) each time the managed engine
/// hands the sync loop a new upstream, until shutdown.
pub fn follow_key(
    appsec: Arc<Appsec>,
    key_file: PathBuf,
    mut upstream: watch::Receiver<Upstream>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let has_client = upstream.borrow_and_update().client.is_some();
            if has_client {
                if let Ok(text) = std::fs::read_to_string(&key_file) {
                    let key = text.trim();
                    if !key.is_empty() {
                        appsec.set_key(key.to_string());
                        info!("AppSec: using the managed engine's bouncer key");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                r = upstream.changed() => if r.is_err() { return },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_appsec_listener_among_the_acquisitions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("acquis.d")).unwrap();
        std::fs::write(
            d.join("acquis.yaml"),
            "filenames: [/var/log/caddy.log]\nlabels: {type: caddy}\n",
        )
        .unwrap();
        let config = d.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "crowdsec_service:\n  acquisition_path: {}\n  acquisition_dir: {}\n",
                d.join("acquis.yaml").display(),
                d.join("acquis.d").display()
            ),
        )
        .unwrap();
        assert_eq!(listener(&config), None);
        std::fs::write(
            d.join("acquis.d/appsec.yaml"),
            "---\nsource: journalctl\n---\nsource: appsec\nlisten_addr: 0.0.0.0:4241\n\
             appsec_config: crowdsecurity/appsec-default\n",
        )
        .unwrap();
        assert_eq!(listener(&config).as_deref(), Some("http://127.0.0.1:4241/"));
        assert_eq!(
            in_acquisition("source: appsec\n").as_deref(),
            Some("http://127.0.0.1:7422/")
        );
    }
}
