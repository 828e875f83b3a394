//! Sync against a real CrowdSec LAPI (Debian's 1.4.6, started by scripts/crowdsec-lapi.sh):
//! decisions added and deleted with cscli reach the snapshot; a short decision expires on
//! its own with LAPI down; a restart with LAPI down enforces the persisted decisions from
//! the first lookup; a wrong key is reported as such.

mod support;

use cerberus::decision::Remediation;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use support::lapi::Lapi;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cscli_adds_and_deletes_reach_the_snapshot_and_expiry_is_local() {
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = cerberus::config::Config {
        // LAPI's deltas can skip a decision committed while it answers a pull (README,
        // departure 14); the periodic full pull brings it. Short here, since cscli writes
        // while the daemon pulls every 300 ms (a CI run under load missed one for 20 s).
        full_resync_interval: std::time::Duration::from_secs(3),
        ..support::config(dir.path(), Some(&lapi.url), Some(&lapi.bouncer_key))
    };
    let app = cerberus::app::start(config).await.unwrap();
    let d = app.decider.clone();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.10",
        "--duration",
        "4h",
        "--reason",
        "v4 test",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "2001:db8::10",
        "--duration",
        "4h",
        "--reason",
        "v6 test",
        "--type",
        "captcha",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "198.51.100.0/24",
        "--duration",
        "4h",
        "--reason",
        "range test",
    ]);
    support::wait_for("the three decisions", 20, || {
        d.answer(ip("192.0.2.10")).remediation == Some(Remediation::Ban)
            && d.answer(ip("2001:db8::10")).remediation == Some(Remediation::Captcha)
            && d.answer(ip("198.51.100.77")).remediation == Some(Remediation::Ban)
    })
    .await;
    let a = d.answer(ip("192.0.2.10"));
    assert_eq!(a.origin.as_deref(), Some("cscli"));
    assert_eq!(a.scenario.as_deref(), Some("v4 test"));
    assert!(d.answer(ip("::ffff:192.0.2.10")).remediation == Some(Remediation::Ban));
    assert!(d.answer(ip("192.0.2.11")).allows());
    assert!(d.answer(ip("198.51.101.1")).allows());

    lapi.cscli(&["decisions", "delete", "--ip", "192.0.2.10"]);
    lapi.cscli(&["decisions", "delete", "--range", "198.51.100.0/24"]);
    support::wait_for("the deletes", 20, || {
        d.answer(ip("192.0.2.10")).allows() && d.answer(ip("198.51.100.77")).allows()
    })
    .await;
    assert_eq!(
        d.answer(ip("2001:db8::10")).remediation,
        Some(Remediation::Captcha)
    );

    // A 5 s decision, then LAPI goes away: it is still enforced, then it stops on its own.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.20",
        "--duration",
        "5s",
        "--reason",
        "short",
    ]);
    support::wait_for("the 5s decision", 20, || {
        !d.answer(ip("192.0.2.20")).allows()
    })
    .await;
    lapi.stop();
    let failed = app.stats.pulls_failed.load(Ordering::Relaxed);
    support::wait_for("a failed pull with LAPI down", 20, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) > failed
    })
    .await;
    support::wait_for("local expiry of the 5s decision", 20, || {
        d.answer(ip("192.0.2.20")).allows()
    })
    .await;
    // LAPI is still down, and what did not expire is still enforced.
    assert!(app.stats.pulls_failed.load(Ordering::Relaxed) > failed);
    assert_eq!(
        d.answer(ip("2001:db8::10")).remediation,
        Some(Remediation::Captcha)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_lapi_down_enforces_persisted_decisions_at_once() {
    let logs = support::logs();
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), Some(&lapi.url), Some(&lapi.bouncer_key));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "203.0.113.5",
        "--duration",
        "4h",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "2001:db8::5",
        "--duration",
        "4h",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "10.20.0.0/16",
        "--duration",
        "4h",
    ]);
    let app = cerberus::app::start(config.clone()).await.unwrap();
    let d = app.decider.clone();
    support::wait_for("first sync", 20, || !d.answer(ip("10.20.3.4")).allows()).await;
    app.stop().await;
    lapi.stop();

    let app = cerberus::app::start(config.clone()).await.unwrap();
    let d = app.decider.clone();
    // The very first lookups, before any pull could have succeeded.
    for addr in ["203.0.113.5", "2001:db8::5", "10.20.3.4"] {
        assert_eq!(
            d.answer(ip(addr)).remediation,
            Some(Remediation::Ban),
            "{addr}"
        );
    }
    assert!(d.answer(ip("203.0.113.6")).allows());
    assert_eq!(app.stats.pulls_ok.load(Ordering::Relaxed), 0);
    support::wait_for("the wait-for-LAPI log line", 20, || {
        logs.text()
            .contains("[CROWDSEC_STARTUP] waiting for LAPI at")
    })
    .await;

    // LAPI back with one decision gone: the resync applies it.
    lapi.restart();
    lapi.cscli(&["decisions", "delete", "--ip", "2001:db8::5"]);
    support::wait_for("resync after LAPI returns", 30, || {
        d.answer(ip("2001:db8::5")).allows()
    })
    .await;
    assert!(!d.answer(ip("203.0.113.5")).allows());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_reported_as_forbidden() {
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), Some(&lapi.url), Some("not-the-key"));
    let app = cerberus::app::start(config).await.unwrap();
    support::wait_for("a forbidden pull", 20, || {
        app.stats.failures().get("forbidden").copied().unwrap_or(0) > 0
    })
    .await;
    let err = app.stats.last_error().unwrap();
    assert!(err.contains("403") && err.contains("api_key"), "{err}");
    assert!(!app.stats.first_sync_done.load(Ordering::Relaxed));
    app.stop().await;
}
