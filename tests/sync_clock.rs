//! Wall-clock jumps (issue #10, item 6), with the wall clock moved by
//! `cerberus::clock::shift_wall_clock`: a forward jump while running forces a full resync
//! and keeps unbans lifted; a clock far ahead at start does not end persisted overrides.
//! One test in this binary, since the shift applies to the whole process.

mod support;

use cerberus::decision::{Remediation, Target};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use support::script_lapi::{self, answer, Reply, Script, Shared};

const DAY_MS: i64 = 86_400_000;

fn banned(app: &cerberus::app::Running, ip: &str) -> bool {
    app.decider.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_resync_fully_and_never_end_overrides() {
    let logs = support::logs();
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().startup([Reply::Body(answer(&[
        (1, "192.0.2.1"),
        (2, "192.0.2.2"),
        (3, "198.51.100.0/24"),
    ]))]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), Some(&url), Some("k"));
    let app = cerberus::app::start(config.clone()).await.unwrap();
    support::wait_for("first sync", 10, || {
        banned(&app, "192.0.2.1") && banned(&app, "198.51.100.7")
    })
    .await;
    // Unbanned here only (no watcher): LAPI keeps sending decision 2.
    app.control
        .unban(Target::parse("192.0.2.2").unwrap())
        .await
        .unwrap();
    assert!(!banned(&app, "192.0.2.2"));

    // A day forward: every known expiry is in the past on the new clock.
    let seen = script.lock().unwrap().startups;
    let ok = app.stats.pulls_ok.load(Ordering::Relaxed);
    cerberus::clock::shift_wall_clock(DAY_MS);
    support::wait_for("a full resync after the jump", 10, || {
        script.lock().unwrap().startups > seen && app.stats.pulls_ok.load(Ordering::Relaxed) > ok
    })
    .await;
    support::wait_for("decisions enforced on the new clock", 10, || {
        banned(&app, "192.0.2.1") && banned(&app, "198.51.100.7")
    })
    .await;
    assert!(!banned(&app, "192.0.2.2"), "the unban ended with the jump");
    assert!(logs
        .text()
        .contains("the wall clock jumped forward by 86400s"));
    app.stop().await;

    // Two more days ahead at start: the override is past its expiry on this clock, but
    // LAPI still sends its decision, so it holds; and it stays on disk.
    cerberus::clock::shift_wall_clock(2 * DAY_MS);
    let app = cerberus::app::start(config.clone()).await.unwrap();
    support::wait_for("sync with the clock ahead", 10, || {
        banned(&app, "192.0.2.1")
    })
    .await;
    assert!(
        !banned(&app, "192.0.2.2"),
        "a clock ahead ended the override"
    );
    app.stop().await;
    cerberus::clock::shift_wall_clock(-3 * DAY_MS);
    let db = cerberus::persist::Db::open(dir.path()).unwrap();
    let kept: Vec<(i64, String)> = db
        .load_overrides(0)
        .unwrap()
        .into_iter()
        .map(|o| (o.id, o.value))
        .collect();
    assert_eq!(kept, vec![(2, "192.0.2.2".to_string())]);
}
