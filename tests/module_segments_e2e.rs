//! End to end through the snapshot segments: our Caddy (caddy-module/cmd/caddy) and the
//! daemon in-process (standalone). The module maps the daemon's segments and answers
//! without a socket lookup; a ban and an unban through the admin API reach it through
//! the segments; the daemon stopped gives the fail policy; the daemon started again
//! with the segment directory removed is mapped again, with no wrong answer.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use support::caddy::{client_from, free_port, our_caddy, status, wait_status, Caddy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_answers_from_the_segments_and_falls_back() {
    let caddy_bin = tokio::task::spawn_blocking(our_caddy).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = with_admin(support::config(dir.path(), None, None));
    let socket = config.socket.display().to_string();
    let snapshot_dir = config.snapshot_path().expect("segments on by default");
    assert_eq!(snapshot_dir, dir.path().join("snapshot"));
    let app = cerberus::app::start(config.clone()).await.unwrap();
    let admin = AdminClient::new(&app);

    let port = free_port();
    let caddyfile = format!(
        "http://:{port} {{\n\tbind 127.0.0.1\n\tcerberus {{\n\t\tsocket {socket}\n\t\ttimeout 200ms\n\t\tfail closed\n\t}}\n\trespond \"ok\"\n}}\n"
    );
    let caddy = Caddy::start(&caddy_bin, &caddyfile);
    let url = format!("http://127.0.0.1:{port}/");
    wait_status("Caddy to serve", "127.0.0.6", &url, 200, 30).await;
    support::wait_for("the module to map the segments", 10, || {
        caddy
            .log()
            .contains("looking up in the daemon's mapped snapshot segments")
    })
    .await;

    let (code, _) = admin
        .post(
            "/ban",
            json!({"value": "127.0.0.5", "duration": "1h", "reason": "<b>x</b>"}),
        )
        .await;
    assert_eq!(code, 201);
    wait_status("the ban of 127.0.0.5", "127.0.0.5", &url, 403, 10).await;
    let before = app.decider.lookups();
    let banned = client_from("127.0.0.5");
    let neighbour = client_from("127.0.0.6");
    for _ in 0..50 {
        assert_eq!(status(&banned, &url, None).await, Some(403));
        assert_eq!(status(&neighbour, &url, None).await, Some(200));
    }
    assert_eq!(
        app.decider.lookups(),
        before,
        "the module asked the socket instead of reading the segments"
    );
    // The module reports what it answered (batches over the socket, every second):
    // the usage metrics count those requests, and the refusals by origin.
    support::wait_for("the module's report", 10, || {
        let t = app.decider.usage().totals();
        let banned: u64 = t
            .dropped
            .iter()
            .filter(|((_, r), _)| r == "ban")
            .map(|(_, n)| n)
            .sum();
        t.processed >= 100 && banned >= 50
    })
    .await;
    // The ban page escapes the reason.
    let page = banned.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("&lt;b&gt;x&lt;/b&gt;") && !page.contains("<b>x</b>"),
        "{page}"
    );

    // Unban: seen through the segments (bounded wait; the time is printed, the
    // benchmark figure is in benches/README.md).
    let start = Instant::now();
    let (code, _) = admin.post("/unban", json!({"value": "127.0.0.5"})).await;
    assert_eq!(code, 200);
    loop {
        if status(&banned, &url, None).await == Some(200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "unban not seen");
    }
    println!("unban seen by the module after {:?}", start.elapsed());
    assert_eq!(app.decider.lookups(), before, "still no socket lookups");

    // The daemon stops: it marks the segments dead, the socket is gone: fail closed.
    admin
        .post("/ban", json!({"value": "127.0.0.7", "duration": "1h"}))
        .await;
    wait_status("the ban of 127.0.0.7", "127.0.0.7", &url, 403, 10).await;
    app.stop().await;
    assert_eq!(
        status(&neighbour, &url, None).await,
        Some(503),
        "fail closed"
    );

    // Segment directory removed, daemon started again: segments mapped again, the
    // persisted ban enforced, no wrong answer on the way.
    std::fs::remove_dir_all(&snapshot_dir).unwrap();
    let app = cerberus::app::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = status(&client_from("127.0.0.7"), &url, None).await;
        let n = status(&neighbour, &url, None).await;
        assert!(
            b != Some(200),
            "banned client let through after the restart"
        );
        assert!(n != Some(403), "neighbour refused after the restart");
        // Back on the segments: right answers and no socket lookup for them.
        let before = app.decider.lookups();
        if b == Some(403) && n == Some(200) {
            let b = status(&client_from("127.0.0.7"), &url, None).await;
            let n = status(&neighbour, &url, None).await;
            if b == Some(403) && n == Some(200) && app.decider.lookups() == before {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not back on the segments: {b:?} {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// A snapshot directory that cannot be made does not stop the daemon: it logs why and
/// the socket serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_snapshot_dir_is_logged_not_fatal() {
    let logs = support::logs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut config = support::config(dir.path(), None, None);
    config.snapshot_dir = cerberus::config::SnapshotDir::Path(file.join("snapshot"));
    let app = cerberus::app::start(config).await.unwrap();
    assert!(app.socket_addr.is_some(), "the socket door still listens");
    assert!(
        logs.text().contains("snapshot segments are off"),
        "{}",
        logs.text()
    );
    app.stop().await;
}
