//! Issue #10, item 7: an unban's answer means it is on disk. The real binary, a stand-in
//! LAPI and no watcher (so only the local override keeps the decision lifted): SIGKILL
//! right after each answer, then a restart with LAPI down (the rows) and with LAPI up
//! again (the overrides against the startup pull): every unbanned IP stays allowed.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::caddy::free_port;
use support::script_lapi::{self, answer, Reply, Script, Shared};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");
const TOKEN: &str = "unban-crash-test-token-0123456789";
const ROUNDS: usize = 5;

struct Daemon {
    child: Child,
    base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

/// `cerberus run -c` against the stand-in; waits for the admin API.
fn daemon(dir: &Path, url: &str) -> Daemon {
    let port = free_port();
    let config = dir.join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nsocket: {dir}/cerberus.sock\nadmin_listen: 127.0.0.1:{port}\n\
             admin_token: {TOKEN}\nforward_auth_listen: off\napi_url: {url}\napi_key: k\n\
             update_frequency: 300ms\nlapi_retry_max: 400ms\nusage_metrics_interval: 0s\n\
             log_level: info\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}{}", support::admin::PREFIX),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the admin API did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// The values of the decisions the daemon holds.
async fn values(http: &reqwest::Client, d: &Daemon) -> String {
    let resp = http
        .get(format!("{}/decisions?limit=1000", d.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body.to_string()
}

async fn wait_holding(http: &reqwest::Client, d: &Daemon, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !values(http, d).await.contains(&format!("\"{value}\"")) {
        assert!(Instant::now() < deadline, "{value} never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_unban_survives_a_sigkill() {
    let all: Vec<(i64, String)> = (0..=ROUNDS).map(|i| (i as i64 + 1, ip(i))).collect();
    let refs: Vec<(i64, &str)> = all.iter().map(|(id, v)| (*id, v.as_str())).collect();
    let full = answer(&refs);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().startup([Reply::Body(full.clone())]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    for round in 0..ROUNDS {
        let mut d = daemon(dir.path(), &url);
        wait_holding(&http, &d, &ip(ROUNDS)).await;
        let resp = http
            .post(format!("{}/unban", d.base))
            .bearer_auth(TOKEN)
            .json(&json!({"value": ip(round)}))
            .send()
            .await
            .unwrap();
        // SIGKILL the moment the answer is in.
        d.child.kill().unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
        let _ = d.child.wait();
    }

    // LAPI down: what is enforced comes from SQLite.
    script
        .lock()
        .unwrap()
        .startup([Reply::Status(500, "down".into())]);
    let d = daemon(dir.path(), &url);
    let held = values(&http, &d).await;
    for round in 0..ROUNDS {
        assert!(!held.contains(&format!("\"{}\"", ip(round))), "{held}");
    }
    assert!(held.contains(&format!("\"{}\"", ip(ROUNDS))), "{held}");
    drop(d);

    // LAPI up with every decision again: the overrides keep the unbanned ones lifted.
    let (startups, deltas) = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Body(full)]);
        (s.startups, s.deltas)
    };
    let d = daemon(dir.path(), &url);
    // A delta after the startup pull: that one is applied (pulls run one after another).
    support::wait_for("the startup pull, then a delta", 10, || {
        let s = script.lock().unwrap();
        s.startups > startups && s.deltas > deltas
    })
    .await;
    let held = values(&http, &d).await;
    for round in 0..ROUNDS {
        assert!(!held.contains(&format!("\"{}\"", ip(round))), "{held}");
    }
    assert!(held.contains(&format!("\"{}\"", ip(ROUNDS))), "{held}");
}
