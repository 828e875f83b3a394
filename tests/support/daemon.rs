//! The real `cerberus run` binary as a child process, for the reliability tests: started
//! on a data directory (kept across restarts), SIGKILLed or stopped, its log (stdout and stderr) in a file,
//! and the decision set it enforces read through the admin API's paged listing.
//!
//! Also [`Entry`] and [`lapi_active`]: the same set as LAPI gives it, so that tests can
//! compare the two.

use super::caddy::free_port;
use super::lapi::Lapi;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");
const TOKEN: &str = "reliability-test-token-0123456789abcdef";

/// One active decision: what both sides must agree on.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub value: String,
    pub type_name: String,
    /// Unix seconds (fractional on LAPI's side).
    pub expires: f64,
}

/// Active decisions by LAPI id.
pub type Set = BTreeMap<i64, Entry>;

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A running daemon; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    /// The admin API's base URL, with the API prefix.
    pub base: String,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// How the daemon runs: its log file (in the data directory), `RUST_LOG`, and config
/// lines added to the test's own.
pub struct Options<'a> {
    pub log_name: &'a str,
    pub rust_log: &'a str,
    pub extra_config: &'a str,
}

/// Starts `cerberus run` on `dir` against `api_url`, its output appended to
/// `dir/{log_name}`; waits until the admin API listens.
pub fn start(dir: &Path, api_url: &str, api_key: &str, o: &Options) -> Daemon {
    let port = free_port();
    let config = dir.join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nsocket: {dir}/cerberus.sock\nadmin_listen: 127.0.0.1:{port}\n\
             admin_token: {TOKEN}\nforward_auth_listen: off\napi_url: {api_url}\n\
             api_key: {api_key}\nupdate_frequency: 500ms\nlapi_timeout: 60s\n\
             lapi_retry_max: 500ms\nusage_metrics_interval: 0s\nlog_level: info\n{}",
            o.extra_config,
            dir = dir.display()
        ),
    )
    .unwrap();
    let log = dir.join(o.log_name);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", o.rust_log)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}{}", super::admin::PREFIX),
        log,
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the admin API did not come up; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every decision the daemon enforces, read page by page (1000 a page); read again
    /// when the total moved between pages (a pull landed part way).
    pub async fn decisions(&self) -> Set {
        'read: loop {
            let mut set = Set::new();
            let mut total = None;
            let mut offset = 0;
            loop {
                let url = format!("{}/decisions?limit=1000&offset={offset}", self.base);
                let resp = self.http.get(url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(resp.status(), 200, "GET /decisions");
                let body: Value = resp.json().await.unwrap();
                let page_total = body["total"].as_u64().unwrap();
                if *total.get_or_insert(page_total) != page_total {
                    continue 'read;
                }
                let page = body["decisions"].as_array().unwrap();
                for d in page {
                    let expires = humantime::parse_rfc3339(d["expires_at"].as_str().unwrap())
                        .unwrap()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64();
                    let entry = Entry {
                        value: d["value"].as_str().unwrap().to_string(),
                        type_name: d["type"].as_str().unwrap().to_string(),
                        expires,
                    };
                    set.insert(d["id"].as_i64().unwrap(), entry);
                }
                offset += page.len();
                if page.is_empty() || offset as u64 >= page_total {
                    break;
                }
            }
            if set.len() as u64 == total.unwrap_or(0) {
                return set;
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// LAPI's active set, from `GET /v1/decisions/stream?startup=true&dedup=false` with
/// `key` (a bouncer key of the test's own: the call moves that bouncer's cursor).
/// Expiries are the request's start plus each `duration`; the second value is how long
/// the request took (the uncertainty of those expiries).
pub fn lapi_active(lapi: &Lapi, key: &str) -> (Set, f64) {
    let before = unix_now();
    let (status, body) = lapi.get("/v1/decisions/stream?startup=true&dedup=false", key);
    let took = unix_now() - before;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let mut set = Set::new();
    for d in body["new"].as_array().into_iter().flatten() {
        let millis =
            cerberus::duration::parse_go_millis(d["duration"].as_str().unwrap()).unwrap() as f64;
        let entry = Entry {
            value: d["value"].as_str().unwrap().to_string(),
            type_name: d["type"].as_str().unwrap().to_string(),
            expires: before + millis / 1000.0,
        };
        set.insert(d["id"].as_i64().unwrap(), entry);
    }
    (set, took)
}

/// Where `daemon` and `lapi` differ, as lines (empty when they agree): ids on one side
/// only, and for common ids a different value or type, or expiries more than `slack`
/// seconds apart. At most 20 lines of each kind.
pub fn differences(daemon: &Set, lapi: &Set, slack: f64) -> Vec<String> {
    let mut out = Vec::new();
    let only_daemon: Vec<_> = daemon.keys().filter(|id| !lapi.contains_key(id)).collect();
    let only_lapi: Vec<_> = lapi.keys().filter(|id| !daemon.contains_key(id)).collect();
    if !only_daemon.is_empty() {
        out.push(format!(
            "{} ids only in the daemon, e.g. {:?}",
            only_daemon.len(),
            &only_daemon
                .iter()
                .take(20)
                .map(|id| (id, &daemon[id]))
                .collect::<Vec<_>>()
        ));
    }
    if !only_lapi.is_empty() {
        out.push(format!(
            "{} ids only in LAPI, e.g. {:?}",
            only_lapi.len(),
            &only_lapi
                .iter()
                .take(20)
                .map(|id| (id, &lapi[id]))
                .collect::<Vec<_>>()
        ));
    }
    let mut unequal = 0;
    for (id, d) in daemon {
        let Some(l) = lapi.get(id) else { continue };
        if d.value != l.value || d.type_name != l.type_name || (d.expires - l.expires).abs() > slack
        {
            unequal += 1;
            if unequal <= 20 {
                out.push(format!("id {id}: daemon {d:?}, LAPI {l:?}"));
            }
        }
    }
    if unequal > 20 {
        out.push(format!("... {unequal} ids differ in all"));
    }
    out
}

/// The longest pull in a daemon log (`... in N ms` / `..., N ms` on its sync lines).
pub fn longest_pull_secs(log: &str) -> f64 {
    log.lines()
        .filter(|l| l.contains("first sync done") || l.contains(" sync: "))
        .filter_map(|l| l.trim_end().strip_suffix(" ms"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
        / 1000.0
}

/// `cscli ARGS` on `lapi`, tried again (up to 5 times) when it fails because LAPI's SQLite
/// database is locked (`database is locked`: LAPI answering pulls on a loaded machine);
/// panics on any other failure. A failed import may have left part of its decisions,
/// which is fine here: LAPI's own set is what the tests compare against.
pub fn cscli_retrying(lapi: &Lapi, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/crowdsec-lapi.sh");
    for attempt in 1..=5 {
        let out = Command::new("bash")
            .arg(&script)
            .arg("cscli")
            .arg(lapi.dir())
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if !(text.contains("database is locked") && attempt < 5) {
            // LAPI's own last lines say why (it once stopped answering mid-run).
            let log = lapi.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let pid = std::fs::read_to_string(lapi.dir().join("crowdsec.pid")).unwrap_or_default();
            let alive = Path::new(&format!("/proc/{}", pid.trim())).exists();
            panic!(
                "cscli {} failed ({}): {text}\nLAPI process alive: {alive}; its log ends:\n{}",
                args.join(" "),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        eprintln!("cscli {}: database is locked, trying again", args.join(" "));
        std::thread::sleep(Duration::from_millis(500));
    }
}
