//! The watcher client against a real LAPI: a ban created through it is seen by cscli and
//! reaches a bouncer's stream; a delete through it removes the decision for cscli and
//! reaches the stream as deleted; wrong credentials are named as such.

mod support;

use cerberus::decision::{Remediation, Target};
use cerberus::lapi::watcher::{NewBan, Watcher, WatcherError};
use std::sync::atomic::Ordering;
use support::lapi::Lapi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_and_delete_through_the_watcher_reach_cscli_and_the_stream() {
    let lapi = Lapi::start();
    let watcher = Watcher::new(
        reqwest::Client::new(),
        &lapi.url,
        &lapi.machine_id,
        &lapi.machine_password,
    );
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(support::config(
        dir.path(),
        Some(&lapi.url),
        Some(&lapi.bouncer_key),
    ))
    .await
    .unwrap();
    let d = app.decider.clone();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    for (value, type_name) in [
        ("192.0.2.77", "ban"),
        ("2001:db8::77", "captcha"),
        ("198.51.100.0/24", "ban"),
    ] {
        watcher
            .ban(&NewBan {
                target: Target::parse(value).unwrap(),
                duration: "2h".into(),
                reason: "manual test".into(),
                type_name: type_name.into(),
            })
            .await
            .unwrap();
        let listed = lapi.cscli(&["decisions", "list", "-o", "json"]);
        assert!(
            listed.contains(value),
            "cscli does not list {value}: {listed}"
        );
    }
    support::wait_for("the bans on the hot path", 20, || {
        d.answer("192.0.2.77".parse().unwrap()).remediation == Some(Remediation::Ban)
            && d.answer("2001:db8::77".parse().unwrap()).remediation == Some(Remediation::Captcha)
            && d.answer("198.51.100.9".parse().unwrap()).remediation == Some(Remediation::Ban)
    })
    .await;
    let a = d.answer("192.0.2.77".parse().unwrap());
    assert_eq!(a.scenario.as_deref(), Some("manual test"));

    assert_eq!(
        watcher
            .delete(Target::parse("192.0.2.77").unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        watcher
            .delete(Target::parse("198.51.100.0/24").unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        watcher
            .delete(Target::parse("203.0.113.1").unwrap())
            .await
            .unwrap(),
        0
    );
    let listed = lapi.cscli(&["decisions", "list", "-o", "json"]);
    assert!(
        !listed.contains("192.0.2.77") && !listed.contains("198.51.100.0/24"),
        "{listed}"
    );
    support::wait_for("the deletes on the hot path", 20, || {
        d.answer("192.0.2.77".parse().unwrap()).allows()
            && d.answer("198.51.100.9".parse().unwrap()).allows()
    })
    .await;
    assert_eq!(
        d.answer("2001:db8::77".parse().unwrap()).remediation,
        Some(Remediation::Captcha)
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_watcher_credentials_are_named() {
    let lapi = Lapi::start();
    let watcher = Watcher::new(reqwest::Client::new(), &lapi.url, &lapi.machine_id, "wrong");
    let err = watcher
        .delete(Target::parse("192.0.2.1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, WatcherError::LoginRefused(_)), "{err}");
    assert!(err.to_string().contains("machine_password"), "{err}");
    lapi.stop();
    let err = watcher
        .delete(Target::parse("192.0.2.1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, WatcherError::Unreachable(_)), "{err}");
}
