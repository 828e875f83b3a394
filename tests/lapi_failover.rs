//! `api_url` as a list, against stand-in LAPIs that can die and come back: the first one
//! down at start, the first one dying mid-run, a wrong key on one, all of them down, and
//! a comeback. Each time the known decisions stay enforced, the LAPI in use is the one
//! `/status`, the metrics and the log name, and the watcher writes where the stream is.

mod support;

use cerberus::decision::Remediation;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use support::admin::{with_admin, AdminClient};
use support::script_lapi::{self, answer, Reply, Script, Shared, Stoppable};

const IP1: &str = "192.0.2.1";
const IP2: &str = "192.0.2.2";
const IP3: &str = "192.0.2.3";

fn banned(app: &cerberus::app::Running, ip: &str) -> bool {
    app.decider.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban)
}

/// A script whose full pulls answer `decisions` and whose deltas are empty.
fn script(decisions: &[(i64, &str)]) -> Shared {
    let s: Shared = Arc::new(Mutex::new(Script::default()));
    s.lock().unwrap().startup([Reply::Body(answer(decisions))]);
    s
}

async fn start(dir: &std::path::Path, urls: &[&str]) -> cerberus::app::Running {
    let mut c = with_admin(support::config(dir, None, Some("k")));
    c.api_url = urls.iter().map(|u| u.to_string()).collect();
    c.machine_id = Some("m".into());
    c.machine_password = Some("p".into());
    cerberus::app::start(c).await.unwrap()
}

async fn lapi_status(admin: &AdminClient) -> Value {
    let (status, body) = admin.get("/status").await;
    assert_eq!(status, 200, "{body}");
    body["lapi"].clone()
}

/// Waits until `/status` names LAPI `pos` (1-based) of `urls` as the one in use.
async fn wait_in_use(admin: &AdminClient, urls: &[&str], pos: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let lapi = lapi_status(admin).await;
        if lapi["in_use"] == json!(pos) && lapi["url"] == json!(urls[pos - 1]) {
            assert_eq!(lapi["urls"], json!(urls));
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "LAPI #{pos} never in use: {lapi}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A node on `urls` whose first LAPI fails: it has IP1 from the second, which `/status`
/// names as in use.
async fn started_on_the_second(
    urls: &[&str],
) -> (tempfile::TempDir, cerberus::app::Running, AdminClient) {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), urls).await;
    let admin = AdminClient::new(&app);
    support::wait_for("the ban from LAPI #2", 10, || banned(&app, IP1)).await;
    wait_in_use(&admin, urls, 2).await;
    (dir, app, admin)
}

/// A URL nobody listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn count(script: &Shared, prefix: &str) -> usize {
    let s = script.lock().unwrap();
    s.requests.iter().filter(|r| r.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_down_at_start_hands_over_to_the_next() {
    let logs = support::logs();
    let second = script(&[(1, IP1)]);
    let url2 = script_lapi::start(second.clone()).await;
    let url1 = dead_url();
    let urls = [url1.as_str(), url2.as_str()];
    let (_dir, app, admin) = started_on_the_second(&urls).await;
    assert!(
        logs.text()
            .contains(&format!("switching to LAPI #2 of api_url ({url2})")),
        "{}",
        logs.text()
    );
    let metrics = admin.metrics().await;
    assert!(
        metrics.contains(&format!("cerberus_lapi_in_use{{url=\"{url2}\"}} 1"))
            && metrics.contains(&format!("cerberus_lapi_in_use{{url=\"{url1}\"}} 0")),
        "{metrics}"
    );
    let (status, diag) = admin.get("/diagnostics/config").await;
    assert_eq!(status, 200, "{diag}");
    let lapi_check = diag["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "lapi"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        lapi_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("in use: #2 of 2") && d.contains(&url2)),
        "{diag}"
    );
    app.stop().await;
}

/// The first dies: the second takes over with a full pull (the failed pull may have moved
/// the cursor), the watcher logs in there, and the first coming back changes nothing until
/// the second fails in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_dying_mid_run_hands_over_and_the_comeback_takes_over_again() {
    let logs = support::logs();
    let one = script(&[(1, IP1)]);
    let two = script(&[(1, IP1), (2, IP2)]);
    let mut lapi1: Stoppable = script_lapi::start_stoppable(one.clone()).await;
    let mut lapi2: Stoppable = script_lapi::start_stoppable(two.clone()).await;
    let urls = [lapi1.url.clone(), lapi2.url.clone()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), &urls).await;
    let admin = AdminClient::new(&app);
    support::wait_for("the first sync from LAPI #1", 10, || banned(&app, IP1)).await;
    wait_in_use(&admin, &urls, 1).await;
    assert_eq!(count(&two, "GET /v1/decisions/stream"), 0);

    lapi1.stop();
    support::wait_for("the ban only LAPI #2 has", 15, || banned(&app, IP2)).await;
    wait_in_use(&admin, &urls, 2).await;
    assert!(banned(&app, IP1), "a known decision was lost in the switch");
    assert!(
        two.lock().unwrap().startups >= 1,
        "the first pull from LAPI #2 is a full one"
    );

    // An unban through the admin API goes to the LAPI in use, with a login there.
    let (status, body) = admin.post("/unban", json!({"value": IP1})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!banned(&app, IP1));
    assert_eq!(count(&two, "POST /v1/watchers/login"), 1);
    assert_eq!(count(&two, "DELETE /v1/decisions"), 1);
    assert_eq!(count(&one, "POST /v1/watchers/login"), 0);
    assert_eq!(count(&one, "DELETE /v1/decisions"), 0);

    // LAPI #1 back: the second one stays in use while it answers.
    lapi1.resume().await;
    let seen = two.lock().unwrap().deltas;
    support::wait_for("three more deltas from LAPI #2", 10, || {
        two.lock().unwrap().deltas >= seen + 3
    })
    .await;
    wait_in_use(&admin, &urls, 2).await;

    // Then LAPI #2 dies: back to #1, which now has a third decision.
    one.lock()
        .unwrap()
        .startup([Reply::Body(answer(&[(2, IP2), (3, IP3)]))]);
    lapi2.stop();
    support::wait_for("the ban made while on LAPI #2", 15, || banned(&app, IP3)).await;
    wait_in_use(&admin, &urls, 1).await;
    assert!(banned(&app, IP2) && !banned(&app, IP1));
    assert_eq!(lapi_status(&admin).await["switches"], json!(2));
    assert!(
        logs.text()
            .contains(&format!("switching to LAPI #1 of api_url ({})", urls[0])),
        "{}",
        logs.text()
    );
    app.stop().await;
}

/// A LAPI that refuses the key is a config problem: said as such, naming it by its
/// position, and the other LAPI is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_on_one_is_named_and_the_other_is_used() {
    let logs = support::logs();
    let refusing: Shared = Arc::new(Mutex::new(Script::default()));
    {
        // What LAPI's API-key middleware answers a key it does not know
        // (pkg/apiserver/middlewares/v1/api_key.go, `MiddlewareFunc`).
        let forbidden = Reply::Status(403, r#"{"message":"access forbidden"}"#.into());
        let mut s = refusing.lock().unwrap();
        s.startup([forbidden.clone()]);
        s.delta = Some(forbidden);
    }
    let url1 = script_lapi::start(refusing.clone()).await;
    let good = script(&[(1, IP1)]);
    let url2 = script_lapi::start(good.clone()).await;
    let urls = [url1.as_str(), url2.as_str()];
    let (_dir, app, admin) = started_on_the_second(&urls).await;
    let text = logs.text();
    assert!(
        text.contains(&format!(
            "LAPI #1 of api_url ({url1}) refused the bouncer credentials: check api_key"
        )),
        "{text}"
    );
    assert_eq!(lapi_status(&admin).await["failures"]["forbidden"], json!(1));
    app.stop().await;
}

/// Both down: what is known stays enforced, every LAPI is tried in turn (with the
/// backoff between rounds), the failure shows in `/status`; the first to come back is
/// taken and a new decision arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_keeps_what_is_known_until_one_comes_back() {
    let one = script(&[(1, IP1)]);
    let two = script(&[(1, IP1), (2, IP2)]);
    let mut lapi1 = script_lapi::start_stoppable(one.clone()).await;
    let mut lapi2 = script_lapi::start_stoppable(two.clone()).await;
    let urls = [lapi1.url.clone(), lapi2.url.clone()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), &urls).await;
    let admin = AdminClient::new(&app);
    support::wait_for("the first sync", 10, || banned(&app, IP1)).await;

    lapi1.stop();
    lapi2.stop();
    let failed = app.stats.pulls_failed.load(Ordering::Relaxed);
    support::wait_for("two rounds over both LAPIs", 15, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) >= failed + 4
    })
    .await;
    assert!(
        banned(&app, IP1),
        "a known decision was dropped while all were down"
    );
    let lapi = lapi_status(&admin).await;
    assert_eq!(lapi["failing"], json!("connect"), "{lapi}");
    assert!(lapi["switches"].as_u64().unwrap() >= 3, "{lapi}");
    assert!(
        lapi["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach LAPI"),
        "{lapi}"
    );

    lapi2.resume().await;
    support::wait_for("the ban from LAPI #2 once it is back", 20, || {
        banned(&app, IP2)
    })
    .await;
    wait_in_use(&admin, &urls, 2).await;
    assert!(banned(&app, IP1));
    assert_eq!(count(&one, "GET /v1/decisions/stream"), 1);
    app.stop().await;
    drop(lapi1);
}
