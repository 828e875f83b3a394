//! The CLI over the admin API, as an operator runs it: the daemon is the real binary
//! with a config file. `ban`, `decisions list`, `unban`, `status` round-trip; bad input
//! names the field and exits non-zero; `cerberus diagnose` (and
//! scripts/diagnose-crowdsec.sh) names LAPI as the failing check when LAPI is down, the
//! daemon when the daemon is down, and passes when all is well.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::caddy::free_port;
use support::lapi::Lapi;

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config and starts `cerberus run -c` on it; waits for the admin API.
fn daemon(dir: &Path, extra: &str) -> (Daemon, PathBuf, u16) {
    daemon_with(dir, "http://127.0.0.1:9", extra, &[])
}

/// [`daemon`] with its own `capi_url` and environment: the proxy variables of this test
/// process are removed from the child, then `env` is set on the child only.
fn daemon_with(
    dir: &Path,
    capi_url: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Daemon, PathBuf, u16) {
    let port = free_port();
    let config = dir.join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nsocket: {dir}/cerberus.sock\nadmin_listen: 127.0.0.1:{port}\n\
             forward_auth_listen: off\ncapi_url: {capi_url}\nlog_level: info\n{extra}",
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().unwrap();
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the admin API did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, config, port)
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn ban_list_unban_status_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, config, _) = daemon(dir.path(), "");
    let c = config.to_str().unwrap();

    let out = cli(&[
        "-c",
        c,
        "ban",
        "192.0.2.30",
        "--duration",
        "2h",
        "--reason",
        "cli test",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("banned 192.0.2.30"),
        "{out:?}"
    );
    let out = cli(&["-c", c, "decisions", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let list = json_of(&out);
    assert_eq!(list["total"], 1);
    assert_eq!(list["decisions"][0]["value"], "192.0.2.30");
    assert_eq!(list["decisions"][0]["scenario"], "cli test");
    let human = cli(&["-c", c, "decisions", "list"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("192.0.2.30"),
        "{human:?}"
    );

    // The daemon answers for the ban on its socket.
    let out = cli(&["-c", c, "lookup", "192.0.2.30"]);
    assert_eq!(json_of(&out)["remediation"], "ban");

    let out = cli(&["-c", c, "ban", "192.0.2.300"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("field `value`") && err.contains("192.0.2.300"),
        "{err}"
    );
    let out = cli(&["-c", c, "ban", "192.0.2.31", "--duration", "soon"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field `duration`"),
        "{out:?}"
    );

    let out = cli(&["-c", c, "unban", "192.0.2.30"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        json_of(&cli(&["-c", c, "lookup", "192.0.2.30"]))["remediation"],
        "allow"
    );
    let out = cli(&["-c", c, "unban", "192.0.2.30"]);
    assert!(!out.status.success(), "nothing left to unban");

    let out = cli(&["-c", c, "disable"]);
    assert!(out.status.success(), "{out:?}");
    let status = json_of(&cli(&["-c", c, "status", "--json"]));
    assert_eq!(
        (status["mode"].as_str(), status["enabled"].as_bool()),
        (Some("standalone"), Some(false))
    );
    let human = cli(&["-c", c, "status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("OFF"),
        "{human:?}"
    );
    assert!(cli(&["-c", c, "enable"]).status.success());

    // A wrong token is named as such.
    let out = cli(&["-c", c, "--token", "nope", "status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong admin token"),
        "{out:?}"
    );
}

#[test]
fn diagnose_names_the_failing_part() {
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let key = lapi.new_bouncer_key("cli-diagnose");
    let (daemon, config, port) = daemon(
        dir.path(),
        &format!(
            "api_url: {}\napi_key: {key}\nupdate_frequency: 300ms\nlapi_timeout: 2s\nlapi_retry_max: 500ms\n",
            lapi.url
        ),
    );
    let c = config.to_str().unwrap();
    // Wait for the first sync (the bouncer key is then known good).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json_of(&cli(&["-c", c, "status", "--json"]));
        if s["lapi"]["pulls_ok"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no sync: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = cli(&["-c", c, "diagnose", "--json"]);
    let report = json_of(&out);
    assert!(out.status.success(), "all well: {report}");
    assert_eq!(report["ok"], true, "{report}");

    // LAPI down: LAPI is the failing check, and only it.
    lapi.stop();
    let out = cli(&["-c", c, "diagnose", "--json"]);
    let report = json_of(&out);
    assert!(!out.status.success(), "{report}");
    assert_eq!(report["failed"], serde_json::json!(["lapi"]), "{report}");
    let lapi_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lapi")
        .unwrap();
    assert!(
        lapi_check["detail"].as_str().unwrap().contains(&lapi.url),
        "{lapi_check}"
    );
    assert!(lapi_check["fix"].is_string(), "{lapi_check}");
    // Human output says the same and exits non-zero.
    let out = cli(&["-c", c, "diagnose"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[FAIL] lapi") && text.contains("failing: lapi"),
        "{text}"
    );
    // The script, and --data-dir to find the token without the config.
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/diagnose-crowdsec.sh"))
        .args([
            "--json",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("CERBERUS", BIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(json_of(&out)["failed"], serde_json::json!(["lapi"]));

    // The daemon down too: both are named.
    drop(daemon);
    let out = cli(&["-c", c, "diagnose", "--json"]);
    let report = json_of(&out);
    assert!(!out.status.success());
    assert_eq!(
        report["failed"],
        serde_json::json!(["daemon", "lapi"]),
        "{report}"
    );
}

/// `GET path` on the admin API with the token from `data_dir/admin_token`: the JSON body.
fn admin_get(dir: &Path, port: u16, path: &str) -> Value {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(dir.join("admin_token")).unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The central API unreachable four ways; `/diagnostics/connectivity` and `cerberus
/// diagnose --json` each name the cause and its fix. `fix` is a part of the fix text.
fn central_api_named(capi_url: &str, env: &[(&str, &str)], cause: &str, fix: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (_d, config, port) = daemon_with(dir.path(), capi_url, "", env);
    let conn = admin_get(
        dir.path(),
        port,
        "/api/v1/cerberus/crowdsec/diagnostics/connectivity",
    );
    let capi = &conn["capi"];
    assert_eq!(capi["status"], "unreachable", "{capi}");
    assert_eq!(capi["cause"], cause, "{capi}");
    assert!(capi["fix"].as_str().unwrap().contains(fix), "{capi}");
    let out = cli(&["-c", config.to_str().unwrap(), "diagnose", "--json"]);
    let v = json_of(&out);
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "capi")
        .unwrap_or_else(|| panic!("no capi check: {v}"))
        .clone();
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["cause"], cause, "{check}");
    assert!(check["fix"].as_str().unwrap().contains(fix), "{check}");
    // The human form names it too.
    let text = cli(&["-c", config.to_str().unwrap(), "diagnose"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(fix), "{text}");
    check
}

#[test]
fn central_api_refused_is_named_with_its_fix() {
    let closed = free_port();
    let c = central_api_named(
        &format!("http://127.0.0.1:{closed}"),
        &[],
        "refused",
        &format!("outbound TCP to 127.0.0.1:{closed} must be open"),
    );
    assert!(c["detail"].as_str().unwrap().contains("refused"), "{c}");
}

#[test]
fn central_api_timeout_is_named_with_its_fix() {
    // Accepts and never answers, as a middlebox that swallows the request would.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        // Three probes: connectivity, diagnose --json, diagnose.
        for s in silent.incoming().take(3).flatten() {
            open.push(s);
        }
        std::thread::sleep(Duration::from_secs(6));
    });
    central_api_named(
        &format!("http://{addr}"),
        &[],
        "timeout",
        "a firewall that drops packets looks like this",
    );
    drop(held);
}

#[test]
fn central_api_dns_failure_is_named_with_its_fix() {
    central_api_named(
        "https://capi.nonexistent.invalid",
        &[],
        "dns",
        "the name capi.nonexistent.invalid does not resolve: check the DNS resolver",
    );
}

#[test]
fn a_failing_proxy_is_named_instead_of_the_central_api() {
    let closed = free_port();
    let proxy = format!("http://127.0.0.1:{closed}");
    let c = central_api_named(
        "https://api.crowdsec.net",
        &[("HTTPS_PROXY", &proxy)],
        "proxy",
        &format!("check that the proxy 127.0.0.1:{closed} runs"),
    );
    assert_eq!(c["proxy"], format!("127.0.0.1:{closed}"), "{c}");
    assert_eq!(c["proxy_env"], "HTTPS_PROXY", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains(&format!(
            "through the proxy 127.0.0.1:{closed} (from HTTPS_PROXY)"
        )),
        "{c}"
    );
    // NO_PROXY naming the host: the proxy is not used (it is a listener that never
    // answers, so going through it would be a timeout), and not blamed.
    let silent_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_proxy = format!("http://{}", silent_proxy.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (_d, _, port) = daemon_with(
        dir.path(),
        &format!("http://127.0.0.1:{}", free_port()),
        "",
        &[("HTTP_PROXY", &silent_proxy), ("NO_PROXY", "127.0.0.1")],
    );
    let conn = admin_get(
        dir.path(),
        port,
        "/api/v1/cerberus/crowdsec/diagnostics/connectivity",
    );
    assert_eq!(conn["capi"]["cause"], "refused", "{conn}");
    assert!(conn["capi"]["proxy"].is_null(), "{conn}");
}
