//! CrowdSec 1.7.8's AppSec component for tests: a LAPI ([`Lapi`]) and, beside it, an
//! agent (`crowdsec -no-api -no-capi`) reporting to it, whose only acquisition is
//! `source: appsec` on a free loopback port, with `crowdsecurity/appsec-virtual-patching`
//! and `crowdsecurity/appsec-generic-rules` installed by cscli from a loopback hub that
//! serves today's hub index (`../shared/crowdsec-hub/.index.json`, or
//! `$CERBERUS_HUB_FIXTURES/.index.json`). The agent is killed on drop.

use super::engine_env::{hub_fixtures, HubServer};
use super::lapi::{version, Lapi};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A LAPI and an AppSec engine reporting to it.
pub struct AppsecEngine {
    pub lapi: Lapi,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    pub addr: String,
    dir: tempfile::TempDir,
    crowdsec: PathBuf,
    child: Option<Child>,
}

/// None (with the reason printed) when the CrowdSec under test has no AppSec (1.4.6).
pub async fn start() -> Option<AppsecEngine> {
    if !version().is_modern() {
        eprintln!(
            "skipped: AppSec needs CrowdSec 1.7.8 (CERBERUS_CROWDSEC_VERSION=1.7.8; \
             scripts/test.sh runs this binary on it); 1.4.6 has no AppSec component"
        );
        return None;
    }
    let index_path = hub_fixtures().join(".index.json");
    let index = std::fs::read(&index_path).unwrap_or_else(|e| {
        panic!(
            "cannot read today's hub index {} ({e}): the AppSec rules come from it \
             (set CERBERUS_HUB_FIXTURES to the folder holding the hub's .index.json)",
            index_path.display()
        )
    });
    let lapi = Lapi::start();
    let hub = HubServer::start(index).await;
    let hub_base = hub.url.trim_end_matches("/hub/.index.json").to_string();
    let dir = tempfile::Builder::new()
        .prefix("cerberus-appsec-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    for d in ["config/acquis.d", "config/notifications", "hub", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    copy_dir(
        &lapi.dir().join("config/patterns"),
        &root.join("config/patterns"),
    );
    std::fs::copy(
        lapi.dir().join("config/simulation.yaml"),
        root.join("config/simulation.yaml"),
    )
    .unwrap();
    let port = super::caddy::free_port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        root.join("acquis.yaml"),
        format!(
            "source: appsec\nlisten_addr: {addr}\nappsec_config: crowdsecurity/appsec-default\n\
             labels:\n  type: appsec\n"
        ),
    )
    .unwrap();
    let r = root.display();
    let l = lapi.dir().display();
    let config = root.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "common:\n  daemonize: false\n  log_media: file\n  log_level: info\n  log_dir: {r}\n  \
             working_dir: .\n\
             config_paths:\n  config_dir: {r}/config/\n  data_dir: {r}/data/\n  \
             simulation_path: {r}/config/simulation.yaml\n  hub_dir: {r}/hub/\n  \
             index_path: {r}/hub/.index.json\n  notification_dir: {r}/config/notifications/\n\
             crowdsec_service:\n  acquisition_path: {r}/acquis.yaml\n  \
             acquisition_dir: {r}/config/acquis.d\n  parser_routines: 1\n\
             cscli:\n  output: human\n  color: \"no\"\n  hub_branch: hub\n  \
             __hub_url_template__: \"{hub_base}/%s/%s\"\n\
             db_config:\n  type: sqlite\n  db_path: {l}/crowdsec.db\n  use_wal: true\n\
             api:\n  client:\n    credentials_path: {l}/creds.yaml\n\
             prometheus:\n  enabled: false\n  level: full\n  listen_addr: 127.0.0.1\n  listen_port: 6060\n"
        ),
    )
    .unwrap();
    let (crowdsec, cscli) = super::engine::binaries();
    for args in [
        vec!["hub", "update"],
        vec![
            "collections",
            "install",
            "crowdsecurity/appsec-virtual-patching",
            "crowdsecurity/appsec-generic-rules",
        ],
    ] {
        super::managed_engine::cscli(&cscli, &config, &args);
    }
    drop(hub);
    let mut engine = AppsecEngine {
        lapi,
        url: format!("http://{addr}/"),
        addr,
        dir,
        crowdsec,
        child: None,
    };
    engine.run();
    Some(engine)
}

impl AppsecEngine {
    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Starts the agent and waits until AppSec listens.
    pub fn run(&mut self) {
        let child = Command::new(&self.crowdsec)
            .arg("-c")
            .arg(self.config())
            .args(["-no-api", "-no-capi"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run crowdsec");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "AppSec did not listen on {} within 60s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent (AppSec then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default()
    }
}

impl Drop for AppsecEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
