//! The admin API against a real LAPI (Debian's crowdsec 1.4.6).
//!
//! With watcher credentials, an unban lifts the decision on the hot path at once and
//! deletes it in LAPI (cscli no longer lists it); a ban is created in LAPI (cscli lists
//! it) and is on the hot path when the answer arrives; the country comes from the alert.
//! Without them, an unban is a local override that holds across a restart of cerberus
//! and a full resync, and ends when the decision would have expired; a ban is refused
//! with 409.

mod support;

use cerberus::app::Running;
use cerberus::config::Config;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use support::lapi::Lapi;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn banned(app: &Running, addr: &str) -> bool {
    !app.decider.answer(ip(addr)).allows()
}

async fn start(config: Config) -> Running {
    let app = tokio::time::timeout(Duration::from_secs(20), cerberus::app::start(config))
        .await
        .expect("start in time")
        .expect("start");
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;
    app
}

fn config(dir: &Path, lapi: &Lapi, key: &str, watcher: bool) -> Config {
    let mut c = with_admin(support::config(dir, Some(&lapi.url), Some(key)));
    if watcher {
        c.machine_id = Some(lapi.machine_id.clone());
        c.machine_password = Some(lapi.machine_password.clone());
    }
    // A closed port: the central API is reported unreachable, with the reason.
    c.capi_url = "http://127.0.0.1:9".into();
    c
}

/// The values cscli lists as active decisions.
fn cscli_values(lapi: &Lapi) -> Vec<String> {
    let out = lapi.cscli(&["decisions", "list", "-o", "json"]);
    let alerts: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    let mut values = Vec::new();
    for alert in alerts.as_array().cloned().unwrap_or_default() {
        for d in alert["decisions"].as_array().cloned().unwrap_or_default() {
            values.push(d["value"].as_str().unwrap_or("").to_string());
        }
    }
    values
}

/// Creates an alert whose source has a country, as the engine does with GeoIP.
async fn alert_with_country(lapi: &Lapi, value: &str, country: &str) {
    // LAPI 1.4.6 refuses a login without a User-Agent (401, "incorrect Username or
    // Password"), whatever the password.
    let http = reqwest::Client::builder()
        .user_agent("cerberus-tests/1")
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/v1/watchers/login", lapi.url))
        .json(&json!({"machine_id": lapi.machine_id, "password": lapi.machine_password}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let login: Value = serde_json::from_str(&login).unwrap_or_else(|e| panic!("{e}: {login}"));
    assert!(login["token"].is_string(), "login: {login}");
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let alert = json!([{
        "scenario": "crowdsecurity/http-probing", "scenario_hash": "", "scenario_version": "",
        "message": "test", "events_count": 1, "start_at": now, "stop_at": now,
        "capacity": 0, "leakspeed": "0", "simulated": false, "events": [],
        "source": {"scope": "Ip", "value": value, "ip": value, "cn": country},
        "decisions": [{"origin": "crowdsec", "type": "ban", "scope": "Ip", "value": value,
                        "duration": "4h", "scenario": "crowdsecurity/http-probing"}],
    }]);
    let resp = http
        .post(format!("{}/v1/alerts", lapi.url))
        .bearer_auth(login["token"].as_str().unwrap())
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_watcher_unban_and_ban_go_through_lapi() {
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let app = start(config(
        dir.path(),
        &lapi,
        &lapi.new_bouncer_key("admin-watcher"),
        true,
    ))
    .await;
    let admin = AdminClient::new(&app);

    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.50",
        "--duration",
        "4h",
        "--reason",
        "from cscli",
    ]);
    support::wait_for("the cscli ban on the hot path", 20, || {
        banned(&app, "192.0.2.50")
    })
    .await;

    // Unban: allowed the moment the answer is back, and gone from LAPI.
    let (status, u) = admin.post("/unban", json!({"value": "192.0.2.50"})).await;
    assert_eq!(status, 200, "{u}");
    assert!(!banned(&app, "192.0.2.50"), "the hot path allows at once");
    assert!(u["lapi"]["deleted"].as_u64().unwrap() >= 1, "{u}");
    assert_eq!(u["local_override"], false, "{u}");
    assert!(
        !cscli_values(&lapi).contains(&"192.0.2.50".to_string()),
        "cscli still lists it"
    );
    // Later pulls do not bring it back.
    let pulls = app.stats.pulls_ok.load(Ordering::Relaxed);
    support::wait_for("three more pulls", 20, || {
        app.stats.pulls_ok.load(Ordering::Relaxed) >= pulls + 3
    })
    .await;
    assert!(!banned(&app, "192.0.2.50"));

    // Ban: in LAPI for every bouncer, and on this hot path when the answer arrives.
    let (status, b) = admin
        .post(
            "/ban",
            json!({"value": "192.0.2.51", "duration": "2h", "reason": "api test"}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(
        (b["via"].as_str(), b["enforced"].as_bool()),
        (Some("lapi"), Some(true)),
        "{b}"
    );
    assert!(banned(&app, "192.0.2.51"));
    assert!(cscli_values(&lapi).contains(&"192.0.2.51".to_string()));
    let (status, b) = admin
        .post(
            "/ban",
            json!({"value": "203.0.113.0/24", "type": "captcha"}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(
        app.decider
            .answer(ip("203.0.113.9"))
            .remediation
            .map(|r| r.as_str()),
        Some("captcha")
    );
    assert!(cscli_values(&lapi).contains(&"203.0.113.0/24".to_string()));

    let (_, list) = admin.get("/decisions?ip=192.0.2.51").await;
    assert_eq!(list["total"], 1, "{list}");
    let d = &list["decisions"][0];
    assert_eq!(
        (d["origin"].as_str(), d["scenario"].as_str()),
        (Some("cscli"), Some("api test"))
    );
    assert_eq!(d["country"], Value::Null, "a manual ban has no country");
    let id = d["id"].as_i64().unwrap();
    assert!(id > 0, "LAPI's id: {d}");

    // Delete by id: gone here and in LAPI.
    let (status, del) = admin.delete(&format!("/decisions/{id}")).await;
    assert_eq!(status, 200, "{del}");
    assert_eq!(del["lapi"]["deleted"], 1, "{del}");
    assert!(!banned(&app, "192.0.2.51"));
    assert!(!cscli_values(&lapi).contains(&"192.0.2.51".to_string()));

    // The country of the alert behind a decision.
    alert_with_country(&lapi, "192.0.2.60", "FR").await;
    support::wait_for("the engine's ban on the hot path", 20, || {
        banned(&app, "192.0.2.60")
    })
    .await;
    // The countries are cached (refreshed at most once a second when one is missing).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = admin.get("/decisions?ip=192.0.2.60").await;
        if list["decisions"][0]["country"] == "FR" {
            break;
        }
        assert!(Instant::now() < deadline, "no country after 10s: {list}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Status and diagnostics see a healthy LAPI and a working watcher.
    let (_, s) = admin.get("/status").await;
    assert_eq!(s["mode"], "lapi");
    assert_eq!(s["lapi"]["health"]["status"], "healthy", "{s}");
    assert_eq!(s["lapi"]["watcher"], true);
    assert!(
        s["lapi"]["last_sync_age_seconds"].as_u64().unwrap() < 60,
        "{s}"
    );
    assert!(
        s["decisions"]["by_origin"]["cscli"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert!(s["snapshot"]["generation"].as_u64().unwrap() > 1);
    let (_, diag) = admin.get("/diagnostics/config").await;
    assert_eq!(diag["ok"], true, "{diag}");
    for name in ["lapi", "bouncer_key", "watcher", "socket", "data_dir"] {
        let c = diag["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(c["status"], "ok", "{c}");
    }
    let (_, conn) = admin.get("/diagnostics/connectivity").await;
    assert_eq!(conn["lapi"]["status"], "healthy", "{conn}");
    assert!(conn["lapi"]["latency_ms"].is_u64(), "{conn}");
    assert_eq!(conn["capi"]["status"], "unreachable", "{conn}");
    assert!(
        conn["capi"]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9"),
        "{conn}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_watcher_an_unban_holds_until_the_decision_expires() {
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let key = lapi.new_bouncer_key("admin-nowatcher");
    let app = start(config(dir.path(), &lapi, &key, false)).await;
    let admin = AdminClient::new(&app);

    let added = Instant::now();
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.70",
        "--duration",
        "25s",
        "--reason",
        "short",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.71",
        "--duration",
        "4h",
        "--reason",
        "long",
    ]);
    support::wait_for("both bans on the hot path", 20, || {
        banned(&app, "192.0.2.70") && banned(&app, "192.0.2.71")
    })
    .await;

    let (status, u) = admin.post("/unban", json!({"value": "192.0.2.70"})).await;
    assert_eq!(status, 200, "{u}");
    assert!(!banned(&app, "192.0.2.70"));
    assert_eq!(u["local_override"], true, "{u}");
    assert!(u["override_until"].is_string(), "{u}");
    assert!(
        u["lapi"]["skipped"]
            .as_str()
            .unwrap()
            .contains("machine_id"),
        "{u}"
    );
    assert!(
        cscli_values(&lapi).contains(&"192.0.2.70".to_string()),
        "LAPI was not told"
    );

    // A ban needs a watcher in LAPI mode.
    let (status, b) = admin.post("/ban", json!({"value": "192.0.2.72"})).await;
    assert_eq!(status, 409, "{b}");
    assert!(b["error"].as_str().unwrap().contains("machine_id"), "{b}");

    // A full resync in this process (LAPI restarts: the next pull is startup=true).
    let failed = app.stats.pulls_failed.load(Ordering::Relaxed);
    lapi.stop();
    support::wait_for("a failed pull while LAPI is down", 30, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) > failed
    })
    .await;
    lapi.restart();
    let ok = app.stats.pulls_ok.load(Ordering::Relaxed);
    support::wait_for("the full resync after it", 30, || {
        app.stats.pulls_ok.load(Ordering::Relaxed) > ok
    })
    .await;
    assert!(
        !banned(&app, "192.0.2.70"),
        "a full resync must not undo the unban"
    );
    assert!(banned(&app, "192.0.2.71"));

    // A restart of cerberus (and its startup pull).
    app.stop().await;
    let overrides = cerberus::persist::Db::open(dir.path())
        .unwrap()
        .load_overrides(0)
        .unwrap();
    assert_eq!(overrides.len(), 1, "{overrides:?}");
    let app = start(config(dir.path(), &lapi, &key, false)).await;
    assert!(!banned(&app, "192.0.2.70"), "the unban survives a restart");
    assert!(banned(&app, "192.0.2.71"));
    assert!(cscli_values(&lapi).contains(&"192.0.2.70".to_string()));

    // A new decision on the same address is enforced: the override lifts decisions, not IPs.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.70",
        "--duration",
        "4h",
        "--type",
        "captcha",
    ]);
    support::wait_for("the new decision on the hot path", 20, || {
        banned(&app, "192.0.2.70")
    })
    .await;

    // Once the lifted decision would have expired, the override is gone.
    let expiry = added + Duration::from_secs(27);
    if let Some(left) = expiry.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    app.stop().await;
    let app = start(config(dir.path(), &lapi, &key, false)).await;
    app.stop().await;
    let overrides = cerberus::persist::Db::open(dir.path())
        .unwrap()
        .load_overrides(0)
        .unwrap();
    assert!(
        overrides.is_empty(),
        "expired overrides are dropped: {overrides:?}"
    );
}
