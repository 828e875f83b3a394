//! A Caddy reload under load (issue #13, acceptance 3): our Caddy with the module and a
//! bare Caddy (same binary, no bouncer) each reloaded twice through the admin API's
//! `/load` while a bounded loopback load runs against both. The module keeps the
//! segments it mapped (the same files in `/proc/PID/maps`, one "mapped" log line, no
//! lookup over the socket), gives no wrong answer, and loses no larger share of its
//! requests than bare Caddy loses to the same reloads.

mod support;

use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use support::caddy::{client_from, free_port, our_caddy, status, wait_status, Caddy};

const MAPPED: &str = "looking up in the daemon's mapped snapshot segments";

/// Counts of one load run.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// No answer: the connection refused, reset or closed before an answer, or a
    /// timeout (what a listener changing hands costs any Caddy).
    unanswered: AtomicUsize,
    /// An answer of 5xx: Caddy's, or the module's fail policy (it fails closed here).
    server_error: AtomicUsize,
    /// An answer, but the wrong one (a ban let through, or an allowed client refused).
    wrong: AtomicUsize,
}

/// Load on `url` from 4 workers until `stop`: three requests from an allowed client for
/// one from a banned one (`refused` is what Caddy answers the banned one: 403 with the
/// module, 200 for bare Caddy). At most 20 s and 20,000 requests.
fn load(
    url: String,
    refused: u16,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let started = Instant::now();
    (0..4)
        .map(|w| {
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let allowed = client_from("127.0.0.6");
                let banned = client_from("127.0.0.5");
                let mut i = w;
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(20)
                    && i < 20_000
                {
                    let (client, want) = if i % 4 == 0 {
                        (&banned, refused)
                    } else {
                        (&allowed, 200)
                    };
                    match status(client, &url, None).await {
                        Some(s) if s == want => tally.ok.fetch_add(1, Ordering::Relaxed),
                        None => tally.unanswered.fetch_add(1, Ordering::Relaxed),
                        Some(s) if s >= 500 => tally.server_error.fetch_add(1, Ordering::Relaxed),
                        Some(_) => tally.wrong.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 4;
                }
            })
        })
        .collect()
}

/// The snapshot segment files `pid` has mapped.
fn mapped_segments(pid: u32, dir: &std::path::Path) -> BTreeSet<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let dir = dir.display().to_string();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with(&dir) && p.ends_with(".seg"))
        .map(str::to_string)
        .collect()
}

/// Reloads the Caddy whose admin API is on `admin_port` with `caddyfile`, forced (the
/// same config would otherwise be skipped).
async fn reload(admin_port: u16, caddyfile: &str) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{admin_port}/load"))
        .header("Content-Type", "text/caddyfile")
        .header("Cache-Control", "must-revalidate")
        .body(caddyfile.to_string())
        .send()
        .await
        .unwrap();
    let code = resp.status();
    assert!(
        code.is_success(),
        "reload: {code}: {}",
        resp.text().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caddy_reload_under_load_keeps_the_mapped_segments() {
    let caddy_bin = tokio::task::spawn_blocking(our_caddy).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = with_admin(support::config(dir.path(), None, None));
    let socket = config.socket.display().to_string();
    let snapshot_dir = config.snapshot_path().expect("segments on by default");
    let app = cerberus::app::start(config).await.unwrap();
    let admin = AdminClient::new(&app);
    let (code, _) = admin
        .post("/ban", json!({"value": "127.0.0.5", "duration": "1h"}))
        .await;
    assert_eq!(code, 201);

    let (mod_port, mod_admin, bare_port, bare_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let global = |admin: u16| format!("admin 127.0.0.1:{admin}\n\tauto_https off");
    // Each reload changes the body answered, so the end shows that both reloads took.
    let mod_site = |body: &str| {
        format!(
            "http://:{mod_port} {{\n\tbind 127.0.0.1\n\tcerberus {{\n\t\tsocket {socket}\n\t\ttimeout 200ms\n\t\tfail closed\n\t}}\n\trespond \"{body}\"\n}}\n"
        )
    };
    let bare_site = |body: &str| {
        format!("http://:{bare_port} {{\n\tbind 127.0.0.1\n\trespond \"{body}\"\n}}\n")
    };
    let with_module = Caddy::start_with_global(&caddy_bin, &global(mod_admin), &mod_site("ok"));
    let bare = Caddy::start_with_global(&caddy_bin, &global(bare_admin), &bare_site("ok"));
    let mod_url = format!("http://127.0.0.1:{mod_port}/");
    let bare_url = format!("http://127.0.0.1:{bare_port}/");
    wait_status("bare Caddy to serve", "127.0.0.6", &bare_url, 200, 30).await;
    wait_status(
        "the module's Caddy to serve",
        "127.0.0.6",
        &mod_url,
        200,
        30,
    )
    .await;
    wait_status("the ban of 127.0.0.5", "127.0.0.5", &mod_url, 403, 10).await;
    support::wait_for("the module to map the segments", 10, || {
        with_module.log().contains(MAPPED)
    })
    .await;
    let segments = mapped_segments(with_module.pid(), &snapshot_dir);
    assert!(
        !segments.is_empty(),
        "no segment in /proc/{}/maps",
        with_module.pid()
    );
    let lookups = app.decider.lookups();

    let stop = Arc::new(AtomicBool::new(false));
    let (mod_tally, bare_tally) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut workers = load(mod_url.clone(), 403, stop.clone(), mod_tally.clone());
    workers.extend(load(
        bare_url.clone(),
        200,
        stop.clone(),
        bare_tally.clone(),
    ));
    for n in 1..=2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = format!("reload {n}");
        let mod_file = format!("{{\n\t{}\n}}\n\n{}", global(mod_admin), mod_site(&body));
        let bare_file = format!("{{\n\t{}\n}}\n\n{}", global(bare_admin), bare_site(&body));
        tokio::join!(reload(mod_admin, &mod_file), reload(bare_admin, &bare_file));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let count = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.unanswered.load(Ordering::Relaxed),
            t.server_error.load(Ordering::Relaxed),
            t.wrong.load(Ordering::Relaxed),
        )
    };
    let (m_ok, m_lost, m_5xx, m_wrong) = count(&mod_tally);
    let (b_ok, b_lost, b_5xx, b_wrong) = count(&bare_tally);
    println!(
        "module: {m_ok} right, {m_lost} unanswered, {m_5xx} 5xx, {m_wrong} wrong; \
         bare Caddy: {b_ok} right, {b_lost} unanswered, {b_5xx} 5xx, {b_wrong} wrong"
    );
    let log = with_module.log();
    for url in [&mod_url, &bare_url] {
        let body = client_from("127.0.0.6")
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "reload 2", "{url} does not serve the reloaded config");
    }
    assert!(
        m_ok > 100 && b_ok > 100,
        "too little load ran: module {m_ok}, bare {b_ok}"
    );
    assert_eq!(b_wrong, 0, "bare Caddy gave a wrong answer");
    assert_eq!(
        m_wrong, 0,
        "the module gave {m_wrong} wrong answers across the reloads"
    );
    // The same segments, no second mapping, and no lookup over the socket meanwhile.
    assert_eq!(
        mapped_segments(with_module.pid(), &snapshot_dir),
        segments,
        "the module mapped other segments"
    );
    assert_eq!(
        log.matches(MAPPED).count(),
        1,
        "the module mapped the segments again:\n{log}"
    );
    assert_eq!(
        app.decider.lookups(),
        lookups,
        "the module asked the socket during the reloads"
    );
    // The module fails no request itself: a 5xx would be its fail policy (a lookup
    // that found no snapshot or socket while Caddy swapped configs), and bare Caddy
    // answers none either.
    assert_eq!(b_5xx, 0, "bare Caddy answered 5xx");
    assert_eq!(
        m_5xx, 0,
        "the module failed {m_5xx} requests during the reloads"
    );
    // What is left is connections that got no answer at all, which bare Caddy loses
    // too: a connection queued on the old config's listener when it closes is reset
    // (Caddy opens a listener per config with SO_REUSEPORT). Which connections are
    // caught is chance, so the shares are compared with a binomial margin: the
    // module's share may exceed bare Caddy's by at most three standard deviations
    // of the pooled share (a module that dropped connections while remapping, or held
    // the old server open, would be far outside it).
    let (m_total, b_total) = (m_ok + m_lost, b_ok + b_lost);
    let pooled = (m_lost + b_lost) as f64 / (m_total + b_total) as f64;
    let sd = (pooled * (1.0 - pooled) * (1.0 / m_total as f64 + 1.0 / b_total as f64)).sqrt();
    let (m_share, b_share) = (
        m_lost as f64 / m_total as f64,
        b_lost as f64 / b_total as f64,
    );
    assert!(
        m_share <= b_share + 3.0 * sd + f64::EPSILON,
        "the module lost {m_lost} of {m_total} requests to the reloads ({:.2}%), bare Caddy \
         {b_lost} of {b_total} ({:.2}%): beyond chance (3 sd = {:.2} points)",
        m_share * 100.0,
        b_share * 100.0,
        sd * 300.0
    );
    drop(bare);
    app.stop().await;
}
