//! The `cerberus` binary itself: `check` lists every problem with its key and exits
//! non-zero; the example config is valid; `run` with no config starts standalone under
//! ./cerberus-data and stops cleanly on SIGTERM and SIGINT.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");

fn check(file: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_names_the_key_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "api_url: http://127.0.0.1:8080\n\
         update_frequency: ten seconds\n\
         trusted_proxies: [10.0.0.0/8, 10.0.0.0/40]\n\
         data_dir: /nonexistent/deeper/data\n\
         upate_frequency: 10s\n\
         machine_password_file: /nonexistent/password\n\
         log_level: loud\n",
    )
    .unwrap();
    let (code, text) = check(&file, &[]);
    assert_eq!(code, 2, "{text}");
    for (key, words) in [
        ("update_frequency", "invalid duration"),
        ("trusted_proxies", "10.0.0.0/40"),
        ("data_dir", "does not exist"),
        (
            "upate_frequency",
            "unknown key (did you mean update_frequency?)",
        ),
        ("api_key", "no api_key"),
        ("machine_password_file", "cannot read /nonexistent/password"),
        ("log_level", "loud"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no line for {key} in:\n{text}"));
        assert!(line.contains(words), "{key}: {line}");
    }

    // An unreadable key file with api_url.
    std::fs::write(
        &file,
        "api_url: https://lapi:8080\napi_key_file: /nonexistent/key\n",
    )
    .unwrap();
    let (code, text) = check(&file, &[]);
    assert_eq!(code, 2);
    assert!(
        text.contains("api_key_file: cannot read /nonexistent/key"),
        "{text}"
    );

    // The environment is checked too, and wins over the file.
    std::fs::write(&file, "update_frequency: 10s\n").unwrap();
    let (code, text) = check(&file, &[("CERBERUS_UPDATE_FREQUENCY", "-3s")]);
    assert_eq!(code, 2);
    assert!(text.contains("update_frequency:"), "{text}");
    let (code, text) = check(&file, &[("CERBERUS_UPDATE_FREQUENCY", "3s")]);
    assert_eq!(code, 0, "{text}");

    // Not YAML at all.
    std::fs::write(&file, "api_url: [unclosed\n").unwrap();
    let (code, text) = check(&file, &[]);
    assert_eq!(code, 2);
    assert!(text.contains("invalid YAML"), "{text}");
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cerberus.yaml");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .env("CERBERUS_FORWARD_AUTH_LISTEN", "off")
        .env("CERBERUS_ADMIN_LISTEN", "off")
        .current_dir(dir.path())
        .args(["check", "-c"])
        .arg(&example)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("config OK: standalone"), "{text}");
}

#[test]
fn check_names_the_managed_engine_mode() {
    let engine = support::managed_engine::Engine::new();
    let bins = support::managed_engine::bins();
    let file = engine.root.join("cerberus.yaml");
    std::fs::write(
        &file,
        format!(
            "data_dir: {}\nforward_auth_listen: \"off\"\nengine:\n  enabled: true\n  crowdsec_bin: {}\n  cscli_bin: {}\n  config_file: {}\n",
            engine.data_dir.display(),
            bins.crowdsec.display(),
            bins.cscli.display(),
            engine.config.display()
        ),
    )
    .unwrap();
    let (code, text) = check(&file, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "config OK: managed CrowdSec engine ({})",
            engine.config.display()
        )),
        "{text}"
    );
}

fn run_until_ready_then_signal(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("CERBERUS_FORWARD_AUTH_LISTEN", "off")
        .env("CERBERUS_ADMIN_LISTEN", "off")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l: &String| l.contains("standalone mode")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no standalone line; got {seen:?}"));
        seen.push(line);
    }
    assert!(dir.path().join("cerberus-data/cerberus.db").exists());
    assert!(
        seen.iter().any(|l| l.contains("[CROWDSEC_STARTUP]")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "no colour codes when the log is not a terminal: {seen:?}"
    );
    send_signal(child.id(), signal);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "cerberus did not stop on signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("cerberus stopped")),
        "{rest:?}"
    );
}

fn send_signal(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn run_without_config_is_standalone_and_stops_on_sigterm() {
    run_until_ready_then_signal(15);
}

#[test]
fn run_stops_on_sigint() {
    run_until_ready_then_signal(2);
}

/// SIGKILL while the persister writes a full replace: the next start opens the database
/// (no corruption) and finds either nothing or every decision, never a part.
#[test]
fn a_kill_during_persistence_leaves_a_database_that_opens_whole() {
    const N: usize = 60_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = rt.block_on(support::serve_body(support::startup_body(N)));
    for kill_after_ms in [0u64, 150, 400] {
        let dir = tempfile::tempdir().unwrap();
        let spawn = |url: &str| {
            Command::new(BIN)
                .env("CERBERUS_FORWARD_AUTH_LISTEN", "off")
                .env("CERBERUS_ADMIN_LISTEN", "off")
                .current_dir(dir.path())
                .env("CERBERUS_API_URL", url)
                .env("CERBERUS_API_KEY", "k")
                .env("CERBERUS_LOG_LEVEL", "debug")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut child = spawn(&url);
        let lines = read_lines(child.stdout.take().unwrap());
        wait_line(&lines, "first sync done");
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        child.kill().unwrap();
        child.wait().unwrap();

        // Restart with LAPI unreachable: what does the database hold?
        let mut child = spawn("http://127.0.0.1:9");
        let lines = read_lines(child.stdout.take().unwrap());
        let line = wait_line(&lines, "persisted decisions from");
        send_signal(child.id(), 15);
        child.wait().unwrap();
        assert!(!line.contains("is unusable"), "{line}");
        let count: usize = line
            .split("enforcing ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line}"));
        assert!(
            count == 0 || count == N,
            "kill after {kill_after_ms} ms left {count} of {N}"
        );
    }
}

fn read_lines(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {needle:?} within 30 s"),
        }
    }
}
