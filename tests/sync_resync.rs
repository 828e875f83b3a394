//! Issue #16 (found by the reconciliation test): LAPI's deltas can miss a decision written
//! while LAPI answered a pull, and nothing but a full pull brings it. A stand-in LAPI whose
//! deltas never carry decision 2 while its full answer does: the daemon enforces it after
//! the periodic full pull (`full_resync_interval`), with no failure or restart in between.

mod support;

use cerberus::decision::Remediation;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::script_lapi::{self, answer, Reply, Script, Shared};

const IP1: &str = "192.0.2.1";
const IP2: &str = "192.0.2.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_deltas_missed_arrives_with_the_periodic_full_pull() {
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script
        .lock()
        .unwrap()
        .startup([Reply::Body(answer(&[(1, IP1)]))]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&url), Some("k"));
    config.full_resync_interval = Duration::from_secs(1);
    let app = cerberus::app::start(config).await.unwrap();
    let banned =
        |ip: &str| app.decider.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban);
    support::wait_for("the first sync", 10, || banned(IP1)).await;
    // Decision 2 lands in LAPI; every delta stays empty, as when LAPI's cursor moved past it.
    let before = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Body(answer(&[(1, IP1), (2, IP2)]))]);
        (s.startups, s.deltas)
    };
    support::wait_for("some deltas", 10, || {
        script.lock().unwrap().deltas > before.1 + 1
    })
    .await;
    support::wait_for("decision 2, from a full pull", 10, || banned(IP2)).await;
    assert!(script.lock().unwrap().startups > before.0);
    assert!(banned(IP1));
}
