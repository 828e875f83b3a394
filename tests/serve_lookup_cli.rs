//! `cerberus lookup IP [--socket PATH]` through the binary, against a daemon started
//! in-process.

mod support;

use cerberus::decision::{Decision, Target};
use std::time::Duration;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");

async fn run(args: &[&str], cwd: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("CERBERUS_SOCKET")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(line: &str) -> serde_json::Value {
    assert_eq!(line.lines().count(), 1, "exactly one line: {line:?}");
    serde_json::from_str(line.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(support::config(dir.path(), None, None))
        .await
        .unwrap();
    let now = cerberus::clock::now_secs_precise();
    let w = vec![
        Decision {
            id: 1,
            target: Target::parse("192.0.2.44").unwrap(),
            type_name: "ban".into(),
            origin: "cscli".into(),
            scenario: "manual ban".into(),
            expires_at: now + 7200,
        },
        Decision {
            id: 2,
            target: Target::parse("2001:db8::/32").unwrap(),
            type_name: "captcha".into(),
            origin: "crowdsec".into(),
            scenario: "crowdsecurity/http-probing".into(),
            expires_at: now + 60,
        },
    ];
    app.control.insert(w).await.unwrap();
    let socket = app.config.socket.to_str().unwrap().to_string();
    let cwd = dir.path().to_path_buf();

    let (code, out, err) = run(&["lookup", "192.0.2.44", "--socket", &socket], &cwd).await;
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["ip"], "192.0.2.44");
    assert_eq!(v["remediation"], "ban");
    assert_eq!(v["origin"], "cscli");
    assert_eq!(v["scenario"], "manual ban");
    let left = v["expires_in_s"].as_u64().unwrap();
    assert!((7190..=7200).contains(&left), "{v}");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{v}");
    assert_eq!(v["bypassed"], false, "protection is on");

    let (code, out, _) = run(&["lookup", "2001:db8:1::9", "--socket", &socket], &cwd).await;
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["remediation"], "captcha");
    assert_eq!(v["origin"], "crowdsec");

    // Nothing applies: allow, origin and scenario null.
    let (code, out, _) = run(&["lookup", "198.51.100.1", "--socket", &socket], &cwd).await;
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["remediation"], "allow");
    assert!(v["origin"].is_null() && v["scenario"].is_null(), "{v}");
    assert_eq!(v["expires_in_s"], 0);

    // The socket from the config (-c).
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("data_dir: {}\nsocket: {socket}\n", dir.path().display()),
    )
    .unwrap();
    let (code, out, err) = run(
        &["lookup", "::ffff:192.0.2.44", "-c", cfg.to_str().unwrap()],
        &cwd,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["ip"], "192.0.2.44");
    assert_eq!(v["remediation"], "ban");

    // A bad IP: a clear message, non-zero exit, nothing on stdout.
    let (code, out, err) = run(&["lookup", "300.1.2.3", "--socket", &socket], &cwd).await;
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("not an IPv4 or IPv6 address"), "{err}");

    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .unwrap();

    // The daemon is gone: unreachable socket.
    let (code, out, err) = run(&["lookup", "192.0.2.44", "--socket", &socket], &cwd).await;
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("cannot ask the daemon on"), "{err}");
    assert!(err.contains(&socket), "{err}");
}
