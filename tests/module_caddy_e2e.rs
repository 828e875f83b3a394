//! End to end with our Caddy (caddy-module/cmd/caddy, built by scripts/build-caddy.sh from
//! the Go module proxy), the cerberus daemon in-process and a real LAPI: a ban gives 403,
//! a delete 200; the daemon stopped gives each site's `fail` policy at once; the daemon
//! started again answers right without restarting Caddy.

mod support;

use std::sync::atomic::Ordering;
use support::caddy::{client_from, free_port, our_caddy, status, wait_status, Caddy};
use support::lapi::Lapi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_follows_lapi_and_applies_the_fail_policy_while_the_daemon_is_down() {
    let caddy_bin = tokio::task::spawn_blocking(our_caddy).await.unwrap();
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), Some(&lapi.url), Some(&lapi.bouncer_key));
    let socket = config.socket.display().to_string();
    let app = cerberus::app::start(config.clone()).await.unwrap();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    let (closed, open) = (free_port(), free_port());
    let site = |port: u16, fail: &str| {
        format!(
            "http://:{port} {{\n\tbind 127.0.0.1\n\tcerberus {{\n\t\tsocket {socket}\n\t\ttimeout 200ms\n\t\tfail {fail}\n\t}}\n\trespond \"ok\"\n}}\n"
        )
    };
    let caddy = Caddy::start(&caddy_bin, &(site(closed, "closed") + &site(open, "open")));
    let url = format!("http://127.0.0.1:{closed}/");
    let url_open = format!("http://127.0.0.1:{open}/");
    wait_status("Caddy to serve", "127.0.0.6", &url, 200, 30).await;

    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "127.0.0.5",
        "--duration",
        "1h",
        "--reason",
        "module e2e",
    ]);
    wait_status("the ban of 127.0.0.5", "127.0.0.5", &url, 403, 20).await;
    assert_eq!(
        status(&client_from("127.0.0.5"), &url_open, None).await,
        Some(403)
    );
    assert_eq!(
        status(&client_from("127.0.0.6"), &url, None).await,
        Some(200)
    );
    // A client-sent X-Forwarded-For changes nothing (Caddy trusts no proxy here).
    assert_eq!(
        status(&client_from("127.0.0.5"), &url, Some("198.51.100.1")).await,
        Some(403)
    );

    lapi.cscli(&["decisions", "delete", "--ip", "127.0.0.5"]);
    wait_status("the unban of 127.0.0.5", "127.0.0.5", &url, 200, 20).await;

    // The daemon goes away: each site answers by its fail policy, without hanging.
    app.stop().await;
    let neighbour = client_from("127.0.0.6");
    assert_eq!(
        status(&neighbour, &url, None).await,
        Some(503),
        "fail closed"
    );
    assert_eq!(
        status(&neighbour, &url_open, None).await,
        Some(200),
        "fail open"
    );

    // Started again (LAPI still has everything): right answers, same Caddy.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "127.0.0.7",
        "--duration",
        "1h",
        "--reason",
        "after restart",
    ]);
    let app = cerberus::app::start(config).await.unwrap();
    wait_status(
        "answers after the daemon restart",
        "127.0.0.6",
        &url,
        200,
        20,
    )
    .await;
    wait_status(
        "the ban made while the daemon was down",
        "127.0.0.7",
        &url,
        403,
        20,
    )
    .await;
    assert!(
        caddy.log().contains("cerberus"),
        "the outage was logged by the module"
    );
    app.stop().await;
}
