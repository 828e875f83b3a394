//! A CrowdSec engine config in a temporary directory, for `crowdsec -c CONFIG -t` and
//! `cscli -c CONFIG ...` (Debian's 1.4.6, unpacked by `scripts/crowdsec-lapi.sh install`).
//!
//! What `crowdsec -t` on 1.4.6 needs, found by running it: the grok `patterns` in the
//! config dir, the API client's credentials file (it is read, not used), an acquisition
//! file with at least one datasource, and, once hub items are linked, a real index at
//! `index_path` (`{}` makes it crash with "assignment to entry in nil map"). Missing
//! GeoIP databases and `data:` files are logged as errors and do not fail the test.
//! `cscli.hub_branch: master` keeps cscli from asking the network for the latest version.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The unpacked `crowdsec` and `cscli` binaries.
pub fn binaries() -> (PathBuf, PathBuf) {
    let b = super::managed_engine::bins();
    (b.crowdsec.clone(), b.cscli.clone())
}

/// An engine config and its directories, removed on drop.
pub struct EngineDir {
    pub dir: tempfile::TempDir,
    /// `DIR/engine`: everything the engine owns (config, hub, data), for tree snapshots.
    pub root: PathBuf,
    pub config: PathBuf,
    pub crowdsec: PathBuf,
    pub cscli: PathBuf,
}

impl EngineDir {
    pub fn new() -> EngineDir {
        let (crowdsec, cscli) = binaries();
        let pkg_etc = crowdsec
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("crowdsec is at ROOT/usr/bin/crowdsec")
            .join("etc/crowdsec");
        let dir = tempfile::Builder::new()
            .prefix("cerberus-engine-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("engine");
        for d in ["config/acquis.d", "config/notifications", "hub", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        copy_dir(&pkg_etc.join("patterns"), &root.join("config/patterns"));
        std::fs::copy(
            pkg_etc.join("profiles.yaml"),
            dir.path().join("profiles.yaml"),
        )
        .unwrap();
        std::fs::copy(
            pkg_etc.join("simulation.yaml"),
            root.join("config/simulation.yaml"),
        )
        .unwrap();
        std::fs::write(root.join("hub/.index.json"), "{}\n").unwrap();
        let log = dir.path().join("caddy-access.log");
        std::fs::write(&log, "").unwrap();
        std::fs::write(
            root.join("config/acquis.yaml"),
            format!(
                "filenames:\n  - {}\nlabels:\n  type: caddy\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("creds.yaml"),
            "url: http://127.0.0.1:9\nlogin: cerberus-tests\npassword: unused\n",
        )
        .unwrap();
        let d = dir.path().display();
        let r = root.display();
        let plugins = pkg_etc.join("../../usr/lib/crowdsec/plugins");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: .\n\
                 config_paths:\n  config_dir: {r}/config/\n  data_dir: {r}/data/\n  \
                 simulation_path: {r}/config/simulation.yaml\n  hub_dir: {r}/hub/\n  \
                 index_path: {r}/hub/.index.json\n  notification_dir: {r}/config/notifications/\n  \
                 plugin_dir: {plugins}/\n\
                 crowdsec_service:\n  acquisition_path: {r}/config/acquis.yaml\n  \
                 acquisition_dir: {r}/config/acquis.d\n  parser_routines: 1\n\
                 cscli:\n  output: human\n  color: \"no\"\n  hub_branch: master\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/crowdsec.db\n  use_wal: true\n\
                 api:\n  client:\n    credentials_path: {d}/creds.yaml\n  server:\n    \
                 listen_uri: 127.0.0.1:9\n    profiles_path: {d}/profiles.yaml\n\
                 prometheus:\n  enabled: false\n  level: full\n  listen_addr: 127.0.0.1\n  listen_port: 6060\n",
                plugins = plugins.display()
            ),
        )
        .unwrap();
        EngineDir {
            dir,
            root,
            config,
            crowdsec,
            cscli,
        }
    }

    pub fn layout(&self) -> cerberus::engine::hub::EngineLayout {
        cerberus::engine::hub::EngineLayout::from_engine_config(&self.config, &self.crowdsec)
            .expect("the test engine config is readable")
    }

    /// `cscli -c CONFIG ARGS`; its stdout, or a panic with its output.
    pub fn cscli(&self, args: &[&str]) -> String {
        super::managed_engine::cscli(&self.cscli, &self.config, args)
    }

    /// `crowdsec -c CONFIG -t`: whether it passed, and its output.
    pub fn config_test(&self) -> (bool, String) {
        let out = Command::new(&self.crowdsec)
            .arg("-c")
            .arg(&self.config)
            .arg("-t")
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
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
