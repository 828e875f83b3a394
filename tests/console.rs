//! CrowdSec console enrollment and heartbeats, end to end: cerberus runs the real
//! `cscli` of the version under test (`console enroll`; Debian's 1.4.6, or 1.7.8 with
//! `CERBERUS_CROWDSEC_VERSION=1.7.8`) against a stand-in of the central API on loopback
//! (tests/support/capi.rs) named in the engine's online credentials. Enrollment
//! succeeds and survives a restart; an expired key, a refused key, a refused engine
//! login, an unreachable or failing central API each give their own message (the
//! transient ones after the logged retries); the key never shows in a log or an answer;
//! the forced heartbeat and the poller report success and failure.

mod support;

use cerberus::app::Running;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use support::admin::{with_admin, AdminClient};
use support::capi::{Capi, EngineConfig, Mode};

const LIMIT: Duration = Duration::from_secs(20);

/// A central API stand-in in `mode`, an engine config pointing at it, and cerberus with
/// the console on (no heartbeat poller), logs captured.
async fn scene(mode: Mode) -> (Capi, EngineConfig, tempfile::TempDir, Running, AdminClient) {
    support::logs();
    let capi = Capi::start(mode).await;
    let engine = EngineConfig::new(&capi);
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Some(&engine), Duration::ZERO).await;
    let admin = AdminClient::new(&app);
    (capi, engine, dir, app, admin)
}

async fn start(dir: &Path, engine: Option<&EngineConfig>, heartbeat: Duration) -> Running {
    let mut config = with_admin(support::config(dir, None, None));
    if let Some(e) = engine {
        config.console_engine_config = Some(e.config.clone());
        config.console_cscli_bin = e.cscli.clone();
    }
    config.heartbeat_interval = heartbeat;
    tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .expect("start in time")
        .expect("start")
}

/// A fresh enrollment key, unique to the test.
fn new_key() -> String {
    format!(
        "clk{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// The captured log lines of this engine's console (they carry its config path).
fn engine_lines(engine: &EngineConfig) -> Vec<String> {
    let tag = engine.config.display().to_string();
    support::logs()
        .text()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Enrolls through the admin API (bounded in time); returns the status and answer, and
/// checks that the key is not in the answer.
async fn enroll(admin: &AdminClient, body: Value) -> (u16, Value) {
    let key = body["enrollment_key"].as_str().unwrap_or("").to_string();
    let (status, answer) = tokio::time::timeout(LIMIT, admin.post("/console/enroll", body))
        .await
        .expect("the enrollment answers in time");
    if key.len() >= 8 {
        assert!(
            !answer.to_string().contains(&key),
            "the enrollment key is in the answer: {answer}"
        );
    }
    (status, answer)
}

fn assert_key_never_logged(key: &str) {
    let logs = support::logs().text();
    assert!(!logs.is_empty());
    assert!(
        !logs.contains(key),
        "the enrollment key appears in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cscli_enrolls_and_the_state_survives_a_restart() {
    let (capi, engine, dir, app, admin) = scene(Mode::Ok).await;

    let (status, before) = admin.get("/console/status").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["state"], "not_enrolled");
    assert_eq!(before["central_api"]["url"], capi.url.as_str());

    let key = new_key();
    let (status, body) = enroll(
        &admin,
        json!({"enrollment_key": key, "name": "web-1", "tags": ["prod", "caddy"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "enrolled");
    assert_eq!(body["name"], "web-1");
    assert_eq!(body["tags"], json!(["prod", "caddy"]));
    assert_eq!(body["attempts"], 1);
    assert!(body["next"].as_str().unwrap().contains("accept"), "{body}");

    // What the real cscli sent: the engine's login, then the enrollment with its token.
    let logins = capi.seen_at(&capi.path("watchers/login"));
    assert_eq!(logins.len(), 1, "{logins:?}");
    let login = logins[0].json();
    assert_eq!(login["machine_id"], capi.login.as_str());
    assert_eq!(login["password"], capi.password.as_str());
    assert!(login["scenarios"].is_array(), "{login}");
    let enrolls = capi.seen_at(&capi.path("watchers/enroll"));
    assert_eq!(enrolls.len(), 1);
    let sent = &enrolls[0];
    let version = support::lapi::version();
    assert!(
        sent.header("user-agent")
            .unwrap_or("")
            .starts_with(&format!("crowdsec/v{}", version.as_str())),
        "not cscli {}: {:?}",
        version.as_str(),
        sent.header("user-agent")
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {}", capi.tokens()[0]).as_str())
    );
    // 1.7.8 sends `autoenroll` and leaves `overwrite` out when false (enrollRequest in
    // pkg/apiclient/auth_service.go); 1.4.6 always sends `overwrite`.
    let want = if version.is_modern() {
        json!({"attachment_key": key, "name": "web-1", "tags": ["prod", "caddy"], "autoenroll": false})
    } else {
        json!({"attachment_key": key, "name": "web-1", "tags": ["prod", "caddy"], "overwrite": false})
    };
    assert_eq!(sent.json(), want);
    // cscli went to its end: it wrote the engine's console options.
    let options = std::fs::read_to_string(&engine.console_options).unwrap();
    assert!(
        options.contains("share_manual_decisions: true"),
        "{options}"
    );

    let (_, st) = admin.get("/status").await;
    assert_eq!(st["console"]["state"], "enrolled", "{st}");
    let lines = engine_lines(&engine);
    assert_eq!(
        count(&lines, "[CROWDSEC_ENROLLMENT] enrollment completed"),
        1,
        "{lines:#?}"
    );
    assert_eq!(count(&lines, "retrying enrollment"), 0, "{lines:#?}");

    app.stop().await;
    let app = start(dir.path(), Some(&engine), Duration::ZERO).await;
    let admin = AdminClient::new(&app);
    let (_, after) = admin.get("/console/status").await;
    assert_eq!(after["state"], "enrolled", "{after}");
    assert_eq!(after["name"], "web-1");
    assert_eq!(after["enrolled_at"], body["enrolled_at"]);
    let (_, diag) = admin.get("/diagnostics/config").await;
    let check = diag["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "console")
        .cloned()
        .unwrap();
    assert_eq!(check["status"], "ok", "{check}");
    app.stop().await;
    assert_key_never_logged(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_refused_keys_are_named_and_not_retried() {
    let (capi, engine, _dir, app, admin) = scene(Mode::ExpiredKey).await;

    let expired = new_key();
    let (status, body) = enroll(&admin, json!({"enrollment_key": expired})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "expired_key");
    assert_eq!(body["field"], "enrollment_key");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("has expired") && msg.contains("new key"),
        "{msg}"
    );
    assert_eq!(body["console"]["state"], "failed");
    let (_, st) = admin.get("/console/status").await;
    assert_eq!(st["state"], "failed");
    assert_eq!(st["code"], "expired_key");
    assert!(st["reason"].as_str().unwrap().contains("expired"), "{st}");

    capi.set_mode(Mode::InvalidKey).await;
    let refused = new_key();
    let (status, body) = enroll(&admin, json!({"enrollment_key": refused})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_key");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("refused the enrollment key as invalid") && msg.contains("HTTP 403"),
        "{msg}"
    );
    // A refusal is final: cerberus does not retry. cscli 1.7.8 itself sends a 403'd
    // request twice more after a new login (RetryConfig of NewClient in
    // pkg/apiclient/client.go: 403, 2 attempts, token invalidated); 1.4.6 does not.
    let per_run = if support::lapi::version().is_modern() {
        3
    } else {
        1
    };
    assert_eq!(
        capi.seen_at(&capi.path("watchers/enroll")).len(),
        2 * per_run
    );
    let lines = engine_lines(&engine);
    assert_eq!(count(&lines, "retrying enrollment"), 0, "{lines:#?}");
    assert_eq!(
        count(&lines, "[CROWDSEC_ENROLLMENT] enrollment failed:"),
        2,
        "{lines:#?}"
    );
    app.stop().await;
    assert_key_never_logged(&expired);
    assert_key_never_logged(&refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_central_api_is_retried_and_names_host_and_port() {
    let (capi, engine, _dir, app, admin) = scene(Mode::Down).await;

    let key = new_key();
    let (status, body) = enroll(&admin, json!({"enrollment_key": key, "name": "edge"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "unreachable");
    let msg = body["error"].as_str().unwrap();
    let hostport = format!("127.0.0.1:{}", capi.port);
    assert!(
        msg.contains(&format!("outbound TCP to {hostport} must be open")),
        "{msg}"
    );
    assert!(msg.contains("connection refused"), "{msg}");
    assert_eq!(body["console"]["state"], "failed");
    assert_eq!(body["console"]["attempts"], 3);

    let lines = engine_lines(&engine);
    for n in [2, 3] {
        let want = format!("[CROWDSEC_ENROLLMENT] retrying enrollment (attempt {n}/3)");
        assert_eq!(count(&lines, &want), 1, "{want} in {lines:#?}");
    }
    assert_eq!(count(&lines, "(attempt 4/3)"), 0);
    assert_eq!(count(&lines, "[CROWDSEC_ENROLLMENT] enrollment failed:"), 1);
    app.stop().await;
    assert_key_never_logged(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_a_later_enrollment_succeeds() {
    let (capi, engine, _dir, app, admin) = scene(Mode::ServerError).await;

    let key = new_key();
    let (status, body) = enroll(&admin, json!({"enrollment_key": key})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "server_error");
    assert!(
        body["error"].as_str().unwrap().contains("HTTP 500"),
        "{body}"
    );
    // The login failed each time: three attempts, three logins.
    assert_eq!(capi.seen_at(&capi.path("watchers/login")).len(), 3);
    assert_eq!(
        count(&engine_lines(&engine), "retrying enrollment (attempt"),
        2
    );

    capi.set_mode(Mode::Ok).await;
    let (status, body) = enroll(&admin, json!({"enrollment_key": key})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "enrolled");
    assert_eq!(body["reason"], Value::Null);
    app.stop().await;
    assert_key_never_logged(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_enrolled_overwrite_and_a_refused_engine_login() {
    let (capi, engine, _dir, app, admin) = scene(Mode::AlreadyEnrolled).await;

    let key = new_key();
    let (status, body) = enroll(&admin, json!({"enrollment_key": key})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "already_enrolled");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("\"overwrite\": true"),
        "{body}"
    );
    // The engine is enrolled, whatever this attempt changed.
    assert_eq!(body["console"]["state"], "enrolled");

    let (status, body) = enroll(
        &admin,
        json!({"enrollment_key": key, "name": "renamed", "overwrite": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed");
    let last = capi
        .seen_at(&capi.path("watchers/enroll"))
        .pop()
        .unwrap()
        .json();
    assert_eq!(last["overwrite"], true);

    capi.set_mode(Mode::Unauthorized).await;
    let (status, body) = enroll(&admin, json!({"enrollment_key": key})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "unauthorized");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("refused the engine's login"), "{msg}");
    assert!(msg.contains("cscli capi register"), "{msg}");
    assert!(
        msg.contains(&engine.credentials.display().to_string()),
        "{msg}"
    );
    assert_eq!(body["console"]["state"], "failed");
    app.stop().await;
    assert_key_never_logged(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_heartbeat_reports_success_and_failure() {
    let (capi, _engine, _dir, app, admin) = scene(Mode::Ok).await;

    let (status, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(status, 200, "{hb}");
    assert_eq!(hb["ok"], true, "{hb}");
    assert_eq!(hb["error"], Value::Null);
    assert!(hb["latency_ms"].is_u64());
    humantime::parse_rfc3339(hb["at"].as_str().unwrap()).expect("RFC 3339");
    let login = capi
        .seen_at(&capi.path("watchers/login"))
        .pop()
        .unwrap()
        .json();
    assert_eq!(login["machine_id"], capi.login.as_str());
    assert!(login["scenarios"].is_array());
    let beat = capi
        .seen_at(&capi.path("heartbeat"))
        .pop()
        .expect("GET /vN/heartbeat");
    assert_eq!(beat.method, "GET");
    assert_eq!(
        beat.header("authorization"),
        Some(format!("Bearer {}", capi.tokens()[0]).as_str())
    );
    let (_, st) = admin.get("/status").await;
    assert_eq!(st["console"]["last_heartbeat"]["ok"], true, "{st}");
    assert_eq!(st["console"]["state"], "not_enrolled");
    let check = check_named;
    let (_, diag) = admin.get("/diagnostics/config").await;
    assert_eq!(check(&diag, "heartbeat")["status"], "ok", "{diag}");
    assert_eq!(check(&diag, "console")["status"], "warn", "{diag}");

    capi.set_mode(Mode::Down).await;
    let (status, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(status, 200, "{hb}");
    assert_eq!(hb["ok"], false, "{hb}");
    let err = hb["error"].as_str().unwrap();
    assert!(
        err.contains("unreachable")
            && err.contains(&format!(
                "outbound TCP to 127.0.0.1:{} must be open",
                capi.port
            )),
        "{err}"
    );
    // Not enrolled: a failed heartbeat is a warning (the engine is not expected to
    // stand with the central API yet), with the reason.
    let (_, diag) = admin.get("/diagnostics/config").await;
    assert_eq!(check(&diag, "heartbeat")["status"], "warn", "{diag}");
    assert!(check(&diag, "heartbeat")["detail"]
        .as_str()
        .unwrap()
        .contains("unreachable"));

    capi.set_mode(Mode::Unauthorized).await;
    let (_, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(hb["ok"], false);
    let err = hb["error"].as_str().unwrap();
    assert!(
        err.contains("refused the engine's login (HTTP 403"),
        "{err}"
    );
    let (_, st) = admin.get("/console/status").await;
    assert_eq!(st["heartbeat"]["last"]["ok"], false, "{st}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_logs_success_then_failure() {
    let logs = support::logs();
    let capi = Capi::start(Mode::Ok).await;
    let engine = EngineConfig::new(&capi);
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Some(&engine), Duration::from_secs(1)).await;
    let ok = "[HEARTBEAT_POLLER] heartbeat sent successfully";
    support::wait_for("a successful heartbeat in the log", 15, || {
        count(&engine_lines(&engine), ok) > 0
    })
    .await;
    assert!(!capi.seen_at(&capi.path("heartbeat")).is_empty());
    capi.set_mode(Mode::Down).await;
    let failed = format!(
        "[HEARTBEAT_POLLER] heartbeat failed: the central API at {} is unreachable",
        capi.url
    );
    support::wait_for("a failed heartbeat in the log", 15, || {
        count(&engine_lines(&engine), &failed) > 0
    })
    .await;
    app.stop().await;
    // Stopped: no more heartbeats from this engine.
    let n = engine_lines(&engine).len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(engine_lines(&engine).len(), n, "{}", logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_engine_config_the_routes_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), None, Duration::from_secs(1)).await;
    let admin = AdminClient::new(&app);
    let key = new_key();
    let answers = [
        admin
            .post("/console/enroll", json!({"enrollment_key": key}))
            .await,
        admin.get("/console/status").await,
        admin.post_empty("/console/heartbeat").await,
    ];
    for (status, body) in answers {
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("console enrollment needs the managed engine or engine.config_file"),
            "{body}"
        );
    }
    let (_, st) = admin.get("/status").await;
    assert_eq!(st["console"], Value::Null);
    let (_, diag) = admin.get("/diagnostics/config").await;
    let console = diag["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "console")
        .cloned()
        .unwrap();
    assert_eq!(console["status"], "skip");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_without_echoing_the_key() {
    let capi = Capi::start(Mode::Ok).await;
    let engine = EngineConfig::new(&capi);
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Some(&engine), Duration::ZERO).await;
    let admin = AdminClient::new(&app);
    let secret = "not a key; rm -rf --no-preserve-root";
    let cases = [
        (json!({}), "enrollment_key"),
        (json!({"enrollment_key": secret}), "enrollment_key"),
        (json!({"enrollment_key": 12345678}), "enrollment_key"),
        (
            json!({"enrollment_key": new_key(), "tags": ["a,b"]}),
            "tags",
        ),
        (json!({"enrollment_key": new_key(), "tags": "prod"}), "tags"),
        (json!({"enrollment_key": new_key(), "name": ""}), "name"),
        (
            json!({"enrollment_key": new_key(), "overwrite": "yes"}),
            "overwrite",
        ),
        (json!({"enrollment_key": new_key(), "key": "x"}), "key"),
    ];
    for (body, field) in cases {
        let (status, answer) = admin.post("/console/enroll", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(!answer.to_string().contains(secret), "{answer}");
    }
    // Nothing reached the central API, and the state did not move.
    assert!(capi.seen().is_empty(), "{:?}", capi.seen());
    let (_, st) = admin.get("/console/status").await;
    assert_eq!(st["state"], "not_enrolled");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cscli_or_missing_credentials_are_named() {
    let capi = Capi::start(Mode::Ok).await;
    let mut engine = EngineConfig::new(&capi);
    engine.cscli = engine.dir.path().join("no-such-cscli");
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Some(&engine), Duration::ZERO).await;
    let admin = AdminClient::new(&app);

    let (status, body) = enroll(&admin, json!({"enrollment_key": new_key()})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "engine_config");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("no-such-cscli") && msg.contains("console_cscli_bin"),
        "{msg}"
    );

    std::fs::remove_file(&engine.credentials).unwrap();
    let (status, body) = enroll(&admin, json!({"enrollment_key": new_key()})).await;
    assert_eq!(status, 409, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains(&engine.credentials.display().to_string())
            && msg.contains("cscli capi register"),
        "{msg}"
    );
    let (_, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(hb["ok"], false);
    assert!(
        hb["error"]
            .as_str()
            .unwrap()
            .contains("cscli capi register"),
        "{hb}"
    );
    assert!(capi.seen().is_empty(), "{:?}", capi.seen());
    app.stop().await;
}

/// Troubleshooting rows of the heartbeat, on loopback only: a name that does not resolve
/// (`nonexistent.invalid`) and a listener that never answers (a timeout) are each named
/// with their fix (a closed port, "connection refused", is in
/// forced_heartbeat_reports_success_and_failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_names_dns_failures_and_timeouts_with_their_fix() {
    let (capi, engine, _dir, app, admin) = scene(Mode::Ok).await;
    let point_at = |url: &str| {
        std::fs::write(
            &engine.credentials,
            format!(
                "url: {url}\nlogin: {}\npassword: {}\n",
                capi.login, capi.password
            ),
        )
        .unwrap();
    };
    point_at("http://nonexistent.invalid:8080/");
    let (_, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(hb["ok"], false, "{hb}");
    let err = hb["error"].as_str().unwrap();
    assert!(
        err.contains("the name nonexistent.invalid does not resolve")
            && err.contains("resolv.conf"),
        "{err}"
    );

    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    point_at(&format!("http://{}/", silent.local_addr().unwrap()));
    let (_, hb) = tokio::time::timeout(
        Duration::from_secs(30),
        admin.post_empty("/console/heartbeat"),
    )
    .await
    .expect("the heartbeat gives up by itself");
    assert_eq!(hb["ok"], false, "{hb}");
    let err = hb["error"].as_str().unwrap();
    assert!(
        err.contains("no answer within") && err.contains("drops packets"),
        "{err}"
    );
    drop(silent);
    app.stop().await;
}

/// The check called `name` in a `/diagnostics/config` answer.
fn check_named(diag: &Value, name: &str) -> Value {
    diag["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} check in {diag}"))
}

/// Troubleshooting row "the engine shown offline in the console": an engine enrolled by
/// the real cscli whose heartbeat fails (the central API down) is said to be shown
/// offline, with the failure's own fix, by `/status` and `/diagnostics/config`; online
/// again once a heartbeat passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_engine_whose_heartbeat_fails_is_shown_offline() {
    let (capi, _engine, _dir, app, admin) = scene(Mode::Ok).await;
    let (status, body) = enroll(&admin, json!({"enrollment_key": new_key()})).await;
    assert_eq!(status, 200, "{body}");

    capi.set_mode(Mode::Down).await;
    let (_, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(hb["ok"], false, "{hb}");
    assert_eq!(hb["cause"], "refused", "{hb}");
    let (_, st) = admin.get("/status").await;
    let standing = &st["console"]["standing"];
    assert_eq!(standing["console"], "offline", "{st}");
    let detail = standing["detail"].as_str().unwrap();
    assert!(
        detail.contains("the CrowdSec console shows this engine offline")
            && detail.contains(&format!(
                "outbound TCP to 127.0.0.1:{} must be open",
                capi.port
            )),
        "{detail}"
    );
    assert!(
        standing["fix"]
            .as_str()
            .unwrap()
            .contains("console/heartbeat"),
        "{st}"
    );
    let (_, diag) = admin.get("/diagnostics/config").await;
    let online = check_named(&diag, "console_online");
    assert_eq!(online["status"], "fail", "{online}");
    assert!(online["fix"].is_string(), "{online}");
    assert_eq!(check_named(&diag, "heartbeat")["status"], "fail", "{diag}");

    capi.set_mode(Mode::Ok).await;
    let (_, hb) = admin.post_empty("/console/heartbeat").await;
    assert_eq!(hb["ok"], true, "{hb}");
    let (_, st) = admin.get("/status").await;
    assert_eq!(st["console"]["standing"]["console"], "online", "{st}");
    let (_, diag) = admin.get("/diagnostics/config").await;
    assert_eq!(
        check_named(&diag, "console_online")["status"],
        "ok",
        "{diag}"
    );
    app.stop().await;
}

/// Troubleshooting row "the heartbeat not running": the poller (every second) beats, then
/// the engine's central API becomes a listener that never answers, so no heartbeat
/// finishes; past two intervals `/status` and `/diagnostics/config` say the poller has
/// sent none since the last, why (its heartbeat has not finished), that the console shows
/// the engine offline, and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_that_sends_no_heartbeat_for_two_intervals_is_named() {
    support::logs();
    let capi = Capi::start(Mode::Ok).await;
    let engine = EngineConfig::new(&capi);
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Some(&engine), Duration::from_secs(1)).await;
    let admin = AdminClient::new(&app);
    let (status, body) = enroll(&admin, json!({"enrollment_key": new_key()})).await;
    assert_eq!(status, 200, "{body}");
    support::wait_for("a successful heartbeat", 15, || {
        !capi.seen_at(&capi.path("heartbeat")).is_empty()
    })
    .await;

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &engine.credentials,
        format!(
            "url: http://{}/\nlogin: {}\npassword: {}\n",
            silent.local_addr().unwrap(),
            capi.login,
            capi.password
        ),
    )
    .unwrap();
    let mut last = Value::Null;
    for _ in 0..40 {
        let (_, st) = admin.get("/status").await;
        last = st["console"]["standing"].clone();
        if last["poller"] == "not_running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last["poller"], "not_running", "{last}");
    assert_eq!(last["console"], "offline", "{last}");
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.contains("has sent no heartbeat since")
            && detail.contains("more than two intervals of 1s")
            && detail.contains("its heartbeat has not finished"),
        "{detail}"
    );
    assert!(
        last["fix"].as_str().unwrap().contains("restart cerberus"),
        "{last}"
    );
    let (_, diag) = admin.get("/diagnostics/config").await;
    let hb = check_named(&diag, "heartbeat");
    assert_eq!(hb["status"], "fail", "{hb}");
    assert!(
        hb["detail"]
            .as_str()
            .unwrap()
            .contains("has sent no heartbeat since"),
        "{hb}"
    );
    assert_eq!(
        check_named(&diag, "console_online")["status"],
        "fail",
        "{diag}"
    );
    app.stop().await;
    drop(silent);
}
