//! End to end: Debian's Caddy 2.6.2 with the forward_auth block of
//! examples/Caddyfile.forward_auth in front of a static `respond "ok"`, cerberus
//! in-process syncing from a real LAPI. Clients bind their own loopback addresses
//! (127.0.0.5, 127.0.0.6, 127.0.0.9, ::1) so that Caddy sees each as a different client.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use support::caddy::{client_from, free_port, status, wait_status, Caddy};
use support::lapi::Lapi;

const CADDY: &str = "/usr/bin/caddy";

/// The `forward_auth ... { ... }` block of the example, pointed at `upstream`.
fn example_forward_auth(upstream: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/Caddyfile.forward_auth");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("\tforward_auth ").expect("a forward_auth block");
    let end = start + text[start..].find("\n\t}\n").expect("its end") + 3;
    text[start..end].replace("127.0.0.1:7420", upstream)
}

fn start_caddy(port: u16, upstream: &str) -> Caddy {
    Caddy::start(
        CADDY,
        &format!(
            "http://:{port} {{\n\tbind 127.0.0.1 [::1]\n{}\n\trespond \"ok\"\n}}\n",
            example_forward_auth(upstream)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_follows_lapi_decisions() {
    assert!(
        Path::new(CADDY).exists(),
        "{CADDY} missing: apt-get install -y caddy"
    );
    let lapi = Lapi::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&lapi.url), Some(&lapi.bouncer_key));
    config.forward_auth_listen = cerberus::config::Listen::Tcp("127.0.0.1:0".into());
    let app = cerberus::app::start(config).await.unwrap();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;
    let upstream = app.forward_auth_addr.clone().unwrap();
    let port = free_port();
    let _caddy = start_caddy(port, &upstream);
    let v4 = format!("http://127.0.0.1:{port}/some/page?q=1");
    let v6 = format!("http://[::1]:{port}/");
    wait_status("Caddy to serve", "127.0.0.6", &v4, 200, 20).await;

    // A ban in LAPI reaches Caddy within a few pulls; other clients are unaffected.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "127.0.0.5",
        "--duration",
        "1h",
        "--reason",
        "e2e",
    ]);
    wait_status("the ban of 127.0.0.5", "127.0.0.5", &v4, 403, 20).await;
    let banned = client_from("127.0.0.5");
    let r = banned.get(&v4).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("127.0.0.5"),
        "the ban page names the client: {body}"
    );
    let other = client_from("127.0.0.6");
    assert_eq!(status(&other, &v4, None).await, Some(200));

    // A client-sent X-Forwarded-For changes nothing: Caddy replaces it.
    assert_eq!(status(&banned, &v4, Some("203.0.113.1")).await, Some(403));
    assert_eq!(status(&other, &v4, Some("127.0.0.5")).await, Some(200));

    // Deleted in LAPI: allowed again.
    lapi.cscli(&["decisions", "delete", "--ip", "127.0.0.5"]);
    wait_status("the unban of 127.0.0.5", "127.0.0.5", &v4, 200, 20).await;

    // A range: 127.0.0.8/30 holds 127.0.0.9 but not 127.0.0.12.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "127.0.0.8/30",
        "--duration",
        "1h",
        "--reason",
        "e2e range",
    ]);
    wait_status("the range ban", "127.0.0.9", &v4, 403, 20).await;
    assert_eq!(
        status(&client_from("127.0.0.12"), &v4, None).await,
        Some(200)
    );
    lapi.cscli(&["decisions", "delete", "--range", "127.0.0.8/30"]);
    wait_status("the range unban", "127.0.0.9", &v4, 200, 20).await;

    // IPv6 over [::1].
    wait_status("IPv6 allowed", "::1", &v6, 200, 20).await;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "::1",
        "--duration",
        "1h",
        "--reason",
        "e2e v6",
    ]);
    wait_status("the ban of ::1", "::1", &v6, 403, 20).await;
    assert_eq!(
        status(&client_from("::1"), &v6, Some("127.0.0.6")).await,
        Some(403)
    );
    assert_eq!(status(&other, &v4, None).await, Some(200));
    lapi.cscli(&["decisions", "delete", "--ip", "::1"]);
    wait_status("the unban of ::1", "::1", &v6, 200, 20).await;

    app.stop().await;
}
