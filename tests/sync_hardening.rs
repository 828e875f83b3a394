//! Decisions that must not be lost or wrongly enforced (issue #10, items 3 to 5), against
//! a scripted stand-in LAPI: a shorter full pull, an id LAPI reuses on another target,
//! and admin commands published while a full pull is under way.

mod support;

use cerberus::decision::{Remediation, Target};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use support::script_lapi::{self, answer, empty, Reply, Script, Shared};

const IP1: &str = "192.0.2.1";
const IP2: &str = "2001:db8::1";
const RANGE: &str = "198.51.100.0/24";
const IN_RANGE: &str = "198.51.100.77";

fn banned(app: &cerberus::app::Running, ip: &str) -> bool {
    app.decider.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban)
}

fn startups(script: &Shared) -> usize {
    script.lock().unwrap().startups
}

async fn start(dir: &std::path::Path, url: &str) -> cerberus::app::Running {
    cerberus::app::start(support::config(dir, Some(url), Some("k")))
        .await
        .unwrap()
}

/// Starts again from `dir` with the stand-in answering 500: what it enforces comes from
/// SQLite.
async fn restart_lapi_down(
    script: &Shared,
    dir: &std::path::Path,
    url: &str,
) -> cerberus::app::Running {
    script
        .lock()
        .unwrap()
        .startup([Reply::Status(500, "db".into())]);
    start(dir, url).await
}

/// Item 3: three decisions, a 500, then a startup answer holding one of them. The other
/// two stay enforced (in memory, from SQLite after a restart, through later deltas);
/// a second full pull that leaves them out too lifts them, in memory and on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_full_pull_holds_decisions_until_a_second_confirms() {
    let logs = support::logs();
    let full = answer(&[(1, IP1), (2, IP2), (3, RANGE)]);
    let short = answer(&[(1, IP1)]);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().startup([Reply::Body(full.clone())]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), &url).await;
    support::wait_for("first sync", 10, || {
        banned(&app, IP1) && banned(&app, IP2) && banned(&app, IN_RANGE)
    })
    .await;

    // A 500, then a short answer (and a pull that hangs, so no second full pull lands).
    let failed = app.stats.pulls_failed.load(Ordering::Relaxed);
    script
        .lock()
        .unwrap()
        .startup([Reply::Status(500, "db".into())]);
    script.lock().unwrap().delta = Some(Reply::Status(500, "db".into()));
    support::wait_for("a 500", 10, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) > failed
    })
    .await;
    let seen = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Body(short.clone()), Reply::Hang]);
        s.delta = None;
        s.startups
    };
    support::wait_for("the short answer, then the confirming pull", 10, || {
        startups(&script) >= seen + 2
    })
    .await;
    assert!(banned(&app, IP1) && banned(&app, IP2) && banned(&app, IN_RANGE));
    assert!(
        logs.text().contains("full pull left out 2 decisions"),
        "{}",
        logs.text()
    );
    app.stop().await;

    // A restart with LAPI down: everything comes from SQLite, all three still there.
    let app = restart_lapi_down(&script, dir.path(), &url).await;
    assert!(
        banned(&app, IP1) && banned(&app, IP2) && banned(&app, IN_RANGE),
        "SQLite lost what the short pull left out"
    );

    // LAPI back: short once more, then whole again; deltas follow with a new decision.
    let seen = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Body(short.clone()), Reply::Body(full.clone())]);
        s.delta = Some(Reply::Body(answer(&[(4, "203.0.113.50")])));
        s.startups
    };
    support::wait_for("the delta after the second full pull", 15, || {
        startups(&script) >= seen + 2 && banned(&app, "203.0.113.50")
    })
    .await;
    assert!(banned(&app, IP1) && banned(&app, IP2) && banned(&app, IN_RANGE));

    // A failed delta forces full pulls; two short ones in a row confirm the drop.
    let seen = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Body(short.clone())]);
        s.delta = Some(Reply::Status(500, "db".into()));
        s.startups
    };
    support::wait_for("two short full pulls", 15, || startups(&script) >= seen + 2).await;
    script.lock().unwrap().delta = Some(empty());
    support::wait_for("the confirmed drop", 10, || {
        !banned(&app, IP2) && !banned(&app, IN_RANGE)
    })
    .await;
    assert!(banned(&app, IP1));
    assert!(logs.text().contains("LAPI confirmed them gone"));
    app.stop().await;

    // And on disk.
    let app = restart_lapi_down(&script, dir.path(), &url).await;
    assert!(banned(&app, IP1));
    assert!(!banned(&app, IP2) && !banned(&app, IN_RANGE));
    app.stop().await;
}

/// Item 4: an override for id N on IP A does not lift a decision N that LAPI sends for
/// IP B (its database was reset, or it is another LAPI): B is enforced from the delta
/// and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_does_not_lift_a_reused_id_on_another_target() {
    let (a, b) = ("192.0.2.10", "192.0.2.11");
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script
        .lock()
        .unwrap()
        .startup([Reply::Body(answer(&[(10, a)]))]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), &url).await;
    support::wait_for("first sync", 10, || banned(&app, a)).await;
    let lifted = app.control.unban(Target::parse(a).unwrap()).await.unwrap();
    assert_eq!(lifted.len(), 1);
    assert!(!banned(&app, a));

    script.lock().unwrap().delta = Some(Reply::Body(answer(&[(10, b)])));
    support::wait_for("id 10 on B through a delta", 10, || banned(&app, b)).await;
    assert!(!banned(&app, a));
    script.lock().unwrap().delta = None;
    app.stop().await;

    // From SQLite, LAPI down.
    let app = restart_lapi_down(&script, dir.path(), &url).await;
    assert!(
        banned(&app, b),
        "the startup path dropped B for A's override"
    );
    assert!(!banned(&app, a));
    app.stop().await;
}

/// Item 5: while a full pull is held open, an admin ban and unban publish; the
/// generation read after each never goes back, also when the full pull lands, and the
/// active-decision counts cached by generation match the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_never_goes_back_when_commands_publish_during_a_full_pull() {
    let full = answer(&[(1, IP1), (2, IP2), (3, RANGE)]);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().startup([Reply::Body(full.clone())]);
    let url = script_lapi::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), &url).await;
    support::wait_for("first sync", 10, || banned(&app, IP1)).await;
    let counts_match = || {
        let snap = app.decider.snapshot();
        let cached = cerberus::metrics::active_counts(&app.decider);
        let fresh = cerberus::metrics::count_active(&snap, cerberus::clock::now_secs_precise());
        cached.by_labels == fresh.by_labels
    };
    assert!(counts_match());

    // A failed delta makes the next pull full; the stand-in holds that one open.
    let release = Arc::new(tokio::sync::Notify::new());
    let seen = {
        let mut s = script.lock().unwrap();
        s.startup([Reply::Held(release.clone(), full.clone())]);
        s.delta = Some(Reply::Status(500, "db".into()));
        s.startups
    };
    support::wait_for("the held full pull", 10, || startups(&script) > seen).await;
    script.lock().unwrap().delta = None;
    let g0 = app.decider.snapshot().generation();
    let ban = cerberus::decision::Decision {
        id: 20,
        target: Target::parse("192.0.2.20").unwrap(),
        type_name: "ban".into(),
        origin: "cscli".into(),
        scenario: "test".into(),
        expires_at: cerberus::clock::now_secs_precise() + 3600,
    };
    app.control.insert(vec![ban]).await.unwrap();
    let g1 = app.decider.snapshot().generation();
    // Counted (and cached) at this generation.
    assert!(counts_match());
    app.control
        .unban(Target::parse(IP1).unwrap())
        .await
        .unwrap();
    let g2 = app.decider.snapshot().generation();
    assert!(g0 < g1 && g1 < g2, "{g0} {g1} {g2}");
    assert!(banned(&app, "192.0.2.20") && !banned(&app, IP1));

    let ok = app.stats.pulls_ok.load(Ordering::Relaxed);
    release.notify_one();
    let mut last = g2;
    support::wait_for("the held full pull to land", 10, || {
        let g = app.decider.snapshot().generation();
        assert!(g >= last, "generation went back: {last} then {g}");
        last = g;
        app.stats.pulls_ok.load(Ordering::Relaxed) > ok
    })
    .await;
    let g3 = app.decider.snapshot().generation();
    assert!(g3 > g2, "the full pull published {g3} after {g2}");
    assert!(counts_match(), "counts cached by generation are stale");
    // The unban still holds; the local ban LAPI does not know is held for a confirming pull.
    assert!(!banned(&app, IP1) && banned(&app, IP2));
    app.stop().await;
}
