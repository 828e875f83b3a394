//! The daemon restarted under load: clients on `bouncer_api::Client` keep asking, reconnect
//! to the new daemon, and never get a wrong answer (the new daemon serves the persisted
//! decisions from its first lookup).

mod support;

use bouncer_api::{Client, ClientConfig, ClientError, Remediation};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_across_a_restart_and_never_get_a_wrong_answer() {
    const N: usize = 2000;
    let (url, _) = support::serve_body(support::startup_body(N)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), Some(&url), Some("k"));
    let app = cerberus::app::start(config.clone()).await.unwrap();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for task in 0..8u32 {
        let (counts, stop) = (counts.clone(), stop.clone());
        let socket = config.socket.clone();
        clients.push(tokio::spawn(async move {
            let client = Client::new(
                ClientConfig::new(socket)
                    .connections(2)
                    .timeout(Duration::from_secs(2)),
            );
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(7919);
                // Decisions cover 10.0.x.y for the first N; 10.200.x.y is never banned.
                let (addr, banned): (IpAddr, bool) = if i % 2 == 0 {
                    let k = (i as usize / 2) % N;
                    (
                        format!("10.0.{}.{}", (k >> 8) & 0xff, k & 0xff)
                            .parse()
                            .unwrap(),
                        true,
                    )
                } else {
                    (
                        format!("10.200.{}.{}", (i >> 8) & 0xff, i & 0xff)
                            .parse()
                            .unwrap(),
                        false,
                    )
                };
                match client.lookup(addr).await {
                    Ok(a) => {
                        let want = if banned {
                            Remediation::Ban
                        } else {
                            Remediation::Allow
                        };
                        if a.remediation == want {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            eprintln!("wrong answer for {addr}: {a:?}");
                            counts.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        if matches!(e, ClientError::Connect { .. }) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }));
    }

    let ok_before = |c: &Counts| c.ok.load(Ordering::Relaxed);
    support::wait_for("answers from the first daemon", 20, || {
        ok_before(&counts) > 2000
    })
    .await;
    app.stop().await;
    let at_restart = counts.ok.load(Ordering::Relaxed);
    let app = cerberus::app::start(config.clone()).await.unwrap();
    support::wait_for("answers from the second daemon", 20, || {
        counts.ok.load(Ordering::Relaxed) > at_restart + 2000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap();
    }
    app.stop().await;
    let (ok, wrong, errors) = (
        counts.ok.load(Ordering::Relaxed),
        counts.wrong.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    eprintln!("answers: {ok} right, {wrong} wrong, {errors} failed calls (while down)");
    assert_eq!(wrong, 0);
    assert!(ok > at_restart);
}
