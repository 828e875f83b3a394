//! A CrowdSec engine (agent and LAPI, Debian's crowdsec 1.4.6) that can really run: its
//! config in a temporary directory, its own loopback port, no hub items, one file
//! acquisition of type caddy; a guard kills whatever still runs that config on drop.
#![allow(dead_code)]

use cerberus::engine::supervisor::{EngineSettings, KEY_FILE};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Bins {
    pub crowdsec: PathBuf,
    pub cscli: PathBuf,
    /// The package's own files (profiles, patterns, plugins).
    pub root: PathBuf,
}

/// A cerberus config in engine mode on `engine` (admin API on a free port, fast sync).
pub fn engine_mode_config(engine: &Engine) -> cerberus::config::Config {
    let mut c = super::admin::with_admin(super::config(&engine.data_dir, None, None));
    c.engine.enabled = true;
    c.engine.crowdsec_bin = bins().crowdsec.clone();
    c.engine.cscli_bin = bins().cscli.clone();
    c.engine.config_file = engine.config.clone();
    c.capi_url = "http://127.0.0.1:9".into();
    c
}

/// Unpacks (1.4.6) or builds (1.7.8) the crowdsec under test once
/// (scripts/crowdsec-lapi.sh install, which reads `CERBERUS_CROWDSEC_VERSION`).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        super::lapi::version();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(repo.join("scripts/crowdsec-lapi.sh"))
            .arg("install")
            .output()
            .expect("cannot run scripts/crowdsec-lapi.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "crowdsec-lapi.sh install failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let get = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("install printed no {key}: {stdout}"))
        };
        let crowdsec = get("CROWDSEC=");
        let root = crowdsec
            .ancestors()
            .nth(3)
            .expect("crowdsec is ROOT/usr/bin/crowdsec")
            .to_path_buf();
        Bins {
            cscli: get("CSCLI="),
            crowdsec,
            root,
        }
    })
}

/// `CSCLI -c CONFIG ARGS`; its stdout, or a panic with its output.
pub fn cscli(cscli: &Path, config: &Path, args: &[&str]) -> String {
    let out = Command::new(cscli)
        .arg("-c")
        .arg(config)
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

pub fn free_port() -> u16 {
    use rand::Rng;
    // Below the ephemeral range, so no outgoing connection takes it meanwhile.
    for _ in 0..100 {
        let port = rand::thread_rng().gen_range(20000..32000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32000");
}

/// A CrowdSec engine config (agent + LAPI) in a temporary directory, on its own loopback
/// port: one file acquisition of type caddy on a log file that exists before the engine
/// starts (1.4.6 only tails files that exist then); by default no hub items.
pub struct Engine {
    pub dir: tempfile::TempDir,
    /// The directory, canonical: config.yaml, config/, hub/, data/, crowdsec.db, crowdsec.log.
    pub root: PathBuf,
    pub config: PathBuf,
    /// A data_dir for cerberus next to the engine (bouncer key, pid file).
    pub data_dir: PathBuf,
    pub port: u16,
    /// The Caddy access log the engine reads.
    pub caddy_log: PathBuf,
}

/// What an [`Engine`] differs by.
#[derive(Default)]
pub struct EngineOptions {
    /// The log to read (created empty if missing). Default `DIR/access.log`.
    pub caddy_log: Option<PathBuf>,
    /// The hub index in the hub dir. Default: empty sections (the 1.4.6 agent needs them).
    pub index: Option<Vec<u8>>,
    /// Serve the engine's Prometheus metrics (so `cscli metrics` tells what was parsed).
    pub prometheus: bool,
    /// Name `DIR/online_api_credentials.yaml` as the central API credentials (the test
    /// writes the file before the engine starts).
    pub online_client: bool,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::with(EngineOptions::default())
    }

    pub fn with(opts: EngineOptions) -> Engine {
        let bins = bins();
        let dir = tempfile::Builder::new()
            .prefix("cerberus-engine-")
            .tempdir()
            .unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let port = free_port();
        let pkg = bins.root.join("etc/crowdsec");
        for sub in ["config/acquis.d", "config/notifications", "data", "hub"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The 1.4.6 agent needs the hub index to have these sections, even empty
        // ("no scenarios in hubIdx" otherwise); `{}` is enough only for -no-cs.
        let index = opts.index.unwrap_or_else(|| {
            br#"{"parsers":{},"postoverflows":{},"scenarios":{},"collections":{}}"#.to_vec()
        });
        std::fs::write(root.join("hub/.index.json"), index).unwrap();
        std::fs::copy(pkg.join("profiles.yaml"), root.join("profiles.yaml")).unwrap();
        std::fs::copy(
            pkg.join("simulation.yaml"),
            root.join("config/simulation.yaml"),
        )
        .unwrap();
        let status = Command::new("cp")
            .arg("-r")
            .arg(pkg.join("patterns"))
            .arg(root.join("config/patterns"))
            .status()
            .unwrap();
        assert!(status.success(), "cannot copy the grok patterns");
        let caddy_log = opts.caddy_log.unwrap_or_else(|| root.join("access.log"));
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
        let prometheus = if opts.prometheus {
            format!(
                "  enabled: true\n  level: full\n  listen_addr: 127.0.0.1\n  listen_port: {}\n",
                free_port()
            )
        } else {
            "  enabled: false\n".to_string()
        };
        let r = root.display();
        let plugins = bins.root.join("usr/lib/crowdsec/plugins");
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
    console_path: {r}/console.yaml
{online_client}    trusted_ips:
      - 127.0.0.1
prometheus:
{prometheus}",
                plugins = plugins.display(),
                // cscli and crowdsec refuse to run when the named file is missing.
                online_client = if opts.online_client {
                    format!("    online_client:\n      credentials_path: {r}/online_api_credentials.yaml\n")
                } else {
                    String::new()
                },
            ),
        )
        .unwrap();
        Engine {
            dir,
            data_dir: root.join("cerberus-data"),
            root,
            config,
            port,
            caddy_log,
        }
    }

    /// Waits until the engine's log shows `n` finished reloads (SIGHUP); bounded.
    pub async fn wait_reloaded(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if log.matches("Reload is finished").count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not finish reload #{n} within {secs}s; its log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn settings(&self) -> EngineSettings {
        let bins = bins();
        let mut s = EngineSettings::new(&bins.crowdsec, &bins.cscli, &self.config, &self.data_dir);
        s.stop_grace = Duration::from_secs(10);
        s.health_timeout = Duration::from_secs(60);
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `cscli -c CONFIG ARGS`; panics with its output when it fails.
    pub fn cscli(&self, args: &[&str]) -> String {
        cscli(&bins().cscli, &self.config, args)
    }

    /// The engine's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("crowdsec.log")).unwrap_or_default()
    }

    /// A script in the engine dir (fault injection only).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.root.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `api.server.online_client.credentials_path` (absent until a test writes it).
    pub fn online_credentials(&self) -> PathBuf {
        self.root.join("online_api_credentials.yaml")
    }

    pub fn key_file(&self) -> PathBuf {
        self.data_dir.join(KEY_FILE)
    }

    /// Processes (alive, not zombies) whose command line has `-c CONFIG`.
    pub fn processes(&self) -> Vec<u32> {
        let want = self.config.display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| alive(*pid))
            .filter(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> = raw
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.windows(2).any(|w| w[0] == "-c" && w[1] == want)
            })
            .collect()
    }
}

impl Drop for Engine {
    /// Whatever happened in the test, nothing of this engine is left running.
    fn drop(&mut self) {
        for pid in self.processes() {
            eprintln!(
                "engine guard: killing leftover pid {pid} of {}",
                self.config.display()
            );
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let _ = &self.dir;
    }
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn health_up(url: &str) -> bool {
    match http().get(format!("{url}/health")).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default().contains("up"),
        _ => false,
    }
}

pub async fn startup_stream(url: &str, key: &str) -> (u16, String) {
    let r = http()
        .get(format!("{url}/v1/decisions/stream?startup=true"))
        .header("X-Api-Key", key)
        .send()
        .await
        .expect("stream request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

pub fn read_key(engine: &Engine) -> String {
    std::fs::read_to_string(engine.key_file())
        .expect("the key file")
        .trim()
        .to_string()
}

/// Bounds one async test.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test took longer than {secs}s"));
}
