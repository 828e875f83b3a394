//! A real CrowdSec Local API (LAPI) for integration tests.
//!
//! Each [`Lapi`] is a `crowdsec -no-cs -no-capi` process of the CrowdSec version under test
//! ([`version`]: Debian's 1.4.6 package, or 1.7.8 built from the Go module proxy), run by
//! `scripts/crowdsec-lapi.sh` on 127.0.0.1 and a free port, with its config, sqlite
//! database and credentials in a temporary directory of its own. It is stopped when the
//! [`Lapi`] is dropped, and also, by a watchdog of the script, when the test process dies.
//!
//! ```ignore
//! mod support;
//! use support::lapi::Lapi;
//!
//! let lapi = Lapi::start();
//! lapi.cscli(&["decisions", "add", "--ip", "192.0.2.1", "--duration", "4h"]);
//! let key = lapi.new_bouncer_key("my-test"); // one key per consumer of the stream
//! let (status, body) = lapi.get("/v1/decisions/stream?startup=true", &key);
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// A running (or stopped, then restartable) LAPI.
pub struct Lapi {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// `127.0.0.1:PORT`, for a raw `TcpStream`.
    pub addr: String,
    pub port: u16,
    /// The API key of the bouncer created with the LAPI. The stream's last-pull time
    /// is kept per bouncer: give every consumer its own key ([`Lapi::new_bouncer_key`]).
    pub bouncer_key: String,
    /// A watcher's credentials (`POST /v1/watchers/login`), needed for writes.
    pub machine_id: String,
    pub machine_password: String,
    cscli: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("scripts").join("crowdsec-lapi.sh")
}

fn run_script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script().display()))
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A CrowdSec release under test, from `CERBERUS_CROWDSEC_VERSION` (default 1.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Debian 12's package (2023): /v2 to the central API, no usage metrics route.
    V1_4_6,
    /// Today's release, built from the Go module proxy by `scripts/crowdsec-build.sh`.
    V1_7_8,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_4_6 => "1.4.6",
            Version::V1_7_8 => "1.7.8",
        }
    }

    /// 1.5 and later (usage metrics from 1.6.3, /v3 to the central API, today's hub).
    pub fn is_modern(self) -> bool {
        self != Version::V1_4_6
    }
}

/// The CrowdSec version this test process runs against; printed once, so that every
/// test's output says which one it used.
pub fn version() -> Version {
    static VERSION: OnceLock<Version> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let raw = std::env::var("CERBERUS_CROWDSEC_VERSION").unwrap_or_default();
        let v = match raw.trim_start_matches('v') {
            "" | "1.4.6" => Version::V1_4_6,
            "1.7.8" => Version::V1_7_8,
            other => panic!("CERBERUS_CROWDSEC_VERSION={other}: the tests know 1.4.6 and 1.7.8"),
        };
        eprintln!("crowdsec under test: {}", v.as_str());
        v
    })
}

/// Unpacks (or builds) the crowdsec under test once per test process.
fn install_once() {
    version();
    static INSTALL: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALL.get_or_init(|| {
        let out = run_script(&["install"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(describe("scripts/crowdsec-lapi.sh install", &out))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Reads the `KEY=VALUE` lines of a file.
fn read_env(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn take(env: &mut HashMap<String, String>, key: &str) -> String {
    env.remove(key)
        .unwrap_or_else(|| panic!("DIR/env written by crowdsec-lapi.sh has no {key}"))
}

impl Lapi {
    /// Starts a new LAPI in a fresh temporary directory. Panics with the script's output
    /// when it cannot.
    pub fn start() -> Lapi {
        Self::start_with(None)
    }

    /// Starts a new LAPI on the shared PostgreSQL database whose env file (written by
    /// `scripts/postgres.sh start`) is `pg_env`; each such LAPI gets credentials of its
    /// own (names suffixed with its port).
    pub fn start_on_postgres(pg_env: &Path) -> Lapi {
        Self::start_with(Some(pg_env))
    }

    fn start_with(pg_env: Option<&Path>) -> Lapi {
        install_once();
        let dir = tempfile::Builder::new()
            .prefix("cerberus-lapi-")
            .tempdir()
            .expect("cannot create a temporary directory");
        Self::run_start_env(dir.path(), pg_env);
        let mut env = read_env(&dir.path().join("env"));
        let port: u16 = take(&mut env, "LAPI_PORT")
            .parse()
            .expect("LAPI_PORT is not a port");
        Lapi {
            url: take(&mut env, "LAPI_URL"),
            addr: format!("127.0.0.1:{port}"),
            port,
            bouncer_key: take(&mut env, "LAPI_BOUNCER_KEY"),
            machine_id: take(&mut env, "LAPI_MACHINE_ID"),
            machine_password: take(&mut env, "LAPI_MACHINE_PASSWORD"),
            cscli: PathBuf::from(take(&mut env, "CSCLI")),
            config: PathBuf::from(take(&mut env, "LAPI_CONFIG")),
            dir,
        }
    }

    fn run_start(dir: &Path) {
        Self::run_start_env(dir, None)
    }

    fn run_start_env(dir: &Path, pg_env: Option<&Path>) {
        let dir = dir.to_str().expect("temporary directory is not UTF-8");
        let owner = std::process::id().to_string();
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(["start", dir, "--owner-pid", &owner]);
        if let Some(pg) = pg_env {
            cmd.env("CERBERUS_LAPI_PG_ENV", pg);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script().display()));
        if !out.status.success() {
            panic!("{}", describe("scripts/crowdsec-lapi.sh start", &out));
        }
    }

    /// Stops the LAPI; its directory (database, credentials, port) is kept for
    /// [`Lapi::restart`]. Does nothing when it is not running. Never panics (it runs
    /// from `Drop`): a failure is printed.
    pub fn stop(&self) {
        let stop = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir_str()])
            .output();
        match stop {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("{}", describe("scripts/crowdsec-lapi.sh stop", &out)),
            Err(e) => eprintln!("cannot run scripts/crowdsec-lapi.sh stop: {e}"),
        }
    }

    /// Starts the LAPI again on the same port, with the same database and keys.
    pub fn restart(&self) {
        Self::run_start(self.dir.path());
        let env = read_env(&self.dir.path().join("env"));
        assert_eq!(
            env.get("LAPI_URL"),
            Some(&self.url),
            "the restarted LAPI moved"
        );
    }

    /// Runs `cscli` on this LAPI's config; returns its stdout, panics with its output
    /// when it fails. `cscli -o json ...` gives machine-readable answers (`null` for an
    /// empty list in 1.4.6).
    pub fn cscli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.cscli)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.cscli.display()));
        if !out.status.success() {
            panic!("{}", describe(&format!("cscli {}", args.join(" ")), &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds a bouncer `name` (unique in this LAPI) and returns its API key.
    pub fn new_bouncer_key(&self, name: &str) -> String {
        let out = run_script(&["bouncer", self.dir_str(), name]);
        if !out.status.success() {
            panic!(
                "{}",
                describe(&format!("crowdsec-lapi.sh bouncer {name}"), &out)
            );
        }
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!key.is_empty(), "crowdsec-lapi.sh bouncer printed no key");
        key
    }

    /// `GET path` with `X-Api-Key: api_key`, over a plain HTTP/1.0 connection; returns
    /// the status code and the body. Careful: a GET of `/v1/decisions/stream` moves
    /// that bouncer's last-pull time, as any consumer's would.
    pub fn get(&self, path: &str, api_key: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr)
            .unwrap_or_else(|e| panic!("cannot connect to the LAPI at {}: {e}", self.addr));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set_read_timeout");
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: cerberus-tests/0.0\r\n\
             X-Api-Key: {api_key}\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .expect("cannot send the request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .expect("cannot read the answer");
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, body.to_string())
    }

    fn dir_str(&self) -> &str {
        // tempfile names its directories in ASCII under an ASCII temp dir.
        self.dir
            .path()
            .to_str()
            .expect("temporary directory is not UTF-8")
    }

    /// The directory holding config.yaml, the database, `env` and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The LAPI's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop()
    }
}
