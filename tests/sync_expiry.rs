//! Issue #16 (found by the crash rounds): an expiry is LAPI's `duration` counted from
//! when LAPI answered, not from when the request left. A stand-in LAPI behind a gate that
//! holds the startup pull for 3 s, then answers a decision of 3h59m55.5s: the daemon's
//! expiry is within a second of the answer's time plus that duration (before the fix it
//! was 3 s early: every decision of a slow pull ended early by the wait).

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::daemon::unix_now;
use support::gate::Gate;
use support::script_lapi::{self, answer, Reply, Script, Shared};

const IP: &str = "192.0.2.7";
/// The stand-in's duration for every decision (`script_lapi::decision`): 3h59m55.5s.
const DURATION_SECS: f64 = 4.0 * 3600.0 - 4.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_does_not_shorten_expiries() {
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script
        .lock()
        .unwrap()
        .startup([Reply::Body(answer(&[(1, IP)]))]);
    let url = script_lapi::start(script.clone()).await;
    let gate = Gate::start(url.trim_start_matches("http://")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&gate.url), Some("k"));
    config.lapi_timeout = Duration::from_secs(20);
    let app = cerberus::app::start(config).await.unwrap();
    // The startup pull is sent and waits at the closed gate.
    support::wait_for("the startup pull at the gate", 10, || {
        gate.arrived.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let opened = unix_now();
    gate.open().await;
    let held = || app.decider.answer(IP.parse().unwrap()).expires_at;
    support::wait_for("the decision", 10, || held().is_some()).await;
    let answered = unix_now();
    let expires = f64::from(held().unwrap());
    // The stand-in answered between `opened` and `answered`; the daemon keeps whole seconds.
    assert!(
        expires >= opened + DURATION_SECS - 1.0 && expires <= answered + DURATION_SECS + 1.0,
        "expiry {expires}, answer between {} and {}",
        opened + DURATION_SECS,
        answered + DURATION_SECS
    );
}
