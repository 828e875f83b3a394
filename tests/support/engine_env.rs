//! A managed CrowdSec engine for end-to-end tests: a config directory for Debian's 1.4.6
//! (agent and LAPI in one process, `common.daemonize: true` so it handles SIGTERM and
//! SIGHUP) that reads one Caddy JSON access log, and a loopback hub that serves the hub
//! index of 2023-03-01 (the one whose `crowdsecurity/caddy` the 1.4.6 engine accepts).
//!
//! The index is read at test time from `../shared/crowdsec-hub/index-2023-03-01.json`
//! (or `$CERBERUS_HUB_FIXTURES/index-2023-03-01.json`); it is never copied into the
//! project. Every process started on a directory's config is killed when it is dropped.

use super::managed_engine::{alive, free_port};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The file name of the 2023 hub index in the fixtures folder.
pub const INDEX_2023: &str = "index-2023-03-01.json";

/// The folder holding the real hub indexes.
pub fn hub_fixtures() -> PathBuf {
    std::env::var_os("CERBERUS_HUB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/crowdsec-hub"))
}

/// The hub index of 2023-03-01; panics saying where it was looked for and how to get it.
pub fn index_2023() -> Vec<u8> {
    let path = hub_fixtures().join(INDEX_2023);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the 2023 hub index {} ({e}). This test needs the real \
             crowdsecurity/caddy collection: put the hub's .index.json of commit 511a7e31d \
             (github.com/crowdsecurity/hub, 2023-03-01) there as {INDEX_2023}, or set \
             CERBERUS_HUB_FIXTURES to the folder holding it",
            path.display()
        )
    })
}

/// Serves one index at `/hub/.index.json` on loopback (404 for anything else); stops on
/// drop. Every item of the real indexes carries its `content`, so nothing else is needed.
pub struct IndexServer {
    /// `http://127.0.0.1:PORT/hub/.index.json`
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl IndexServer {
    pub async fn start(index: Vec<u8>) -> IndexServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hub/.index.json", listener.local_addr().unwrap());
        let index = Arc::new(index);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let index = index.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        if head.len() > 64 * 1024 {
                            return;
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("");
                    let (status, body): (&str, &[u8]) = if path == "/hub/.index.json" {
                        ("200 OK", &index)
                    } else {
                        ("404 Not Found", b"not here")
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                });
            }
        });
        IndexServer { url, task }
    }
}

impl Drop for IndexServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A managed-engine directory:
///
/// ```text
/// DIR/config.yaml                 the engine config (crowdsec -c)
/// DIR/config/{acquis.yaml,patterns/,simulation.yaml,...}   config_dir
/// DIR/hub/.index.json             the 2023 index (hub items land under DIR/hub)
/// DIR/data/                       the engine's data_dir; DIR/crowdsec.db its database
/// DIR/crowdsec.log                the engine's log
/// DIR/cerberus-data/              a data_dir for cerberus (bouncer key, pid file)
/// ```
pub struct ManagedEngineDir {
    dir: tempfile::TempDir,
    /// `DIR`, canonical.
    pub root: PathBuf,
    pub config: PathBuf,
    pub crowdsec: PathBuf,
    pub cscli: PathBuf,
    /// The LAPI's port on 127.0.0.1.
    pub port: u16,
    /// The Caddy access log the engine reads (created empty if it was missing).
    pub caddy_log: PathBuf,
    /// A data_dir for cerberus next to the engine.
    pub cerberus_data: PathBuf,
}

impl ManagedEngineDir {
    /// A directory whose engine reads `DIR/caddy-access.log`.
    pub fn new() -> ManagedEngineDir {
        ManagedEngineDir::build(None)
    }

    /// A directory whose engine reads `caddy_log`.
    pub fn with_caddy_log(caddy_log: &Path) -> ManagedEngineDir {
        ManagedEngineDir::build(Some(caddy_log))
    }

    fn build(caddy_log: Option<&Path>) -> ManagedEngineDir {
        let (crowdsec, cscli) = super::engine::binaries();
        let pkg = crowdsec
            .ancestors()
            .nth(3)
            .expect("crowdsec is at ROOT/usr/bin/crowdsec")
            .to_path_buf();
        let pkg_etc = pkg.join("etc/crowdsec");
        let dir = tempfile::Builder::new()
            .prefix("cerberus-managed-")
            .tempdir()
            .unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for d in ["config/acquis.d", "config/notifications", "hub", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        copy_dir(&pkg_etc.join("patterns"), &root.join("config/patterns"));
        std::fs::copy(pkg_etc.join("profiles.yaml"), root.join("profiles.yaml")).unwrap();
        std::fs::copy(
            pkg_etc.join("simulation.yaml"),
            root.join("config/simulation.yaml"),
        )
        .unwrap();
        std::fs::write(root.join("hub/.index.json"), index_2023()).unwrap();

        // The 1.4.6 engine only tails files that exist when it starts.
        let caddy_log = caddy_log
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.join("caddy-access.log"));
        if !caddy_log.exists() {
            std::fs::write(&caddy_log, "").unwrap();
        }
        std::fs::write(
            root.join("config/acquis.yaml"),
            format!(
                "filenames:\n  - {}\nlabels:\n  type: caddy\n",
                caddy_log.display()
            ),
        )
        .unwrap();

        let port = free_port();
        // Its own Prometheus port, so that `cscli metrics` can tell what was read and parsed.
        let metrics_port = free_port();
        let r = root.display();
        let plugins = pkg.join("usr/lib/crowdsec/plugins");
        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:
  daemonize: true
  log_media: file
  log_level: info
  log_dir: {r}/
  working_dir: .
config_paths:
  config_dir: {r}/config/
  data_dir: {r}/data/
  simulation_path: {r}/config/simulation.yaml
  hub_dir: {r}/hub/
  index_path: {r}/hub/.index.json
  notification_dir: {r}/config/notifications/
  plugin_dir: {plugins}/
crowdsec_service:
  acquisition_path: {r}/config/acquis.yaml
  acquisition_dir: {r}/config/acquis.d
  parser_routines: 1
cscli:
  output: human
  color: \"no\"
  hub_branch: master
db_config:
  log_level: info
  type: sqlite
  db_path: {r}/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {r}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {r}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: true
  level: full
  listen_addr: 127.0.0.1
  listen_port: {metrics_port}
",
                plugins = plugins.display()
            ),
        )
        .unwrap();
        ManagedEngineDir {
            dir,
            cerberus_data: root.join("cerberus-data"),
            root,
            config,
            crowdsec,
            cscli,
            port,
            caddy_log,
        }
    }

    /// The temporary directory (removed on drop).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT`
    pub fn lapi_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The engine's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("crowdsec.log")).unwrap_or_default()
    }

    /// Waits until the engine's log shows `n` finished reloads (SIGHUP); bounded.
    pub async fn wait_reloaded(&self, n: usize, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if log.matches("Reload is finished").count() >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the engine did not finish reload #{n} within {secs}s; its log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `cscli -c CONFIG ARGS`; its stdout, or a panic with its output.
    pub fn cscli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(&self.cscli)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cscli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Live processes (not zombies) whose command line has `-c CONFIG`.
    pub fn processes(&self) -> Vec<u32> {
        let want = self.config.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| alive(*pid))
            .filter(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                args.windows(2)
                    .any(|w| w[0] == b"-c" && w[1] == want.as_bytes())
            })
            .collect()
    }
}

impl Drop for ManagedEngineDir {
    /// Whatever the test did, nothing runs on this config afterwards.
    fn drop(&mut self) {
        for pid in self.processes() {
            eprintln!(
                "managed engine guard: killing leftover pid {pid} of {}",
                self.config.display()
            );
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
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
