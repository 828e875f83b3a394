//! The whole promise, end to end: our Caddy (with the cerberus module) logs JSON to a file,
//! the managed CrowdSec 1.4.6 engine with the 2023 `crowdsecurity/caddy` collection reads
//! it, a client probing missing paths through Caddy is banned by the engine and then gets
//! 403 from Caddy through cerberus while another client keeps getting 200, and an unban
//! through the admin API lets the first client in again.
//!
//! All of it as an operator runs it: cerberus with `engine.enabled` starts the engine
//! itself, and the presets are installed through `POST /hub/presets/install`.
//!
//! Clients bind their own loopback addresses: the attacker 127.0.0.5, the neighbour
//! 127.0.0.6. Needs `scripts/crowdsec-lapi.sh install` (run by the test), the Go toolchain
//! for `scripts/build-caddy.sh` (run by the test) and the hub index of 2023-03-01 (see
//! `support::engine_env`). Run: `cargo test --test engine_e2e -- --nocapture`.

mod support;

use cerberus::config::Config;
use serde_json::json;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use support::caddy::{free_port, our_caddy, status, wait_status, Caddy};
use support::engine_env::{caddy_engine, caddy_presets, HubServer};
use support::managed_engine::{bins, Engine};

const ATTACKER: &str = "127.0.0.5";
const NEIGHBOUR: &str = "127.0.0.6";
/// Missing paths the attacker asks for: `http-probing` bans more than 10 distinct ones
/// within 10 s. They all end in the same file name, so that `http-crawl-non_statics`
/// (distinct file names) stays quiet and no second decision lands after the unban.
const PROBES: usize = 40;

/// A client from `local` that sends a User-Agent, as browsers and scanners do: the 2023
/// `crowdsecurity/caddy-logs` parser fails a line without one (the last grok of its node
/// group reads `request.headers.User-Agent`), and an unparsed line is never counted.
fn browser_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) cerberus-engine-e2e")
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// One site: JSON access log to `log`, cerberus on `socket` (fail closed), `/` answers
/// 200 "ok" and every other path 404.
fn caddyfile(port: u16, log: &Path, socket: &Path) -> String {
    format!(
        "http://:{port} {{
\tbind 127.0.0.1
\tlog {{
\t\toutput file {log}
\t\tformat json
\t}}
\tcerberus {{
\t\tsocket {socket}
\t\ttimeout 200ms
\t\tfail closed
\t}}
\trespond / \"ok\" 200
\trespond \"not found\" 404
}}
",
        log = log.display(),
        socket = socket.display()
    )
}

/// Bounds the whole test.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test took longer than {secs}s"));
}

/// The attacker asks for `PROBES` paths that do not exist; each must be a 404 from Caddy
/// (the ban may land during the run: then the rest are 403).
async fn probe(url: &str) -> (usize, usize) {
    let attacker = browser_from(ATTACKER);
    let (mut missing, mut banned) = (0, 0);
    for i in 0..PROBES {
        match status(&attacker, &format!("{url}probe-{i}/missing"), None).await {
            Some(404) => missing += 1,
            Some(403) => banned += 1,
            other => panic!("probe {i}: expected 404 (or 403 once banned), got {other:?}"),
        }
    }
    (missing, banned)
}

/// Lines of Caddy's JSON access log whose `request.remote_ip` is `ip`.
fn logged_from(log: &Path, ip: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["request"]["remote_ip"] == ip)
        .count()
}

/// cerberus in engine mode on `engine`, its admin API on loopback, nothing beyond it.
fn cerberus_config(engine: &Engine, hub_url: &str) -> Config {
    let mut c = with_admin(support::config(&engine.data_dir, None, None));
    c.engine.enabled = true;
    c.engine.crowdsec_bin = bins().crowdsec.clone();
    c.engine.cscli_bin = bins().cscli.clone();
    c.engine.config_file = engine.config.clone();
    c.engine.hub_url = hub_url.to_string();
    // Loopback only: no central API, no heartbeats.
    c.capi_url = "http://127.0.0.1:9".into();
    c.heartbeat_interval = Duration::ZERO;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prober_is_banned_by_the_managed_engine_and_let_in_again_by_an_unban() {
    let logs = support::logs();
    let began = Instant::now();
    let caddy_bin = tokio::task::spawn_blocking(our_caddy).await.unwrap();
    let presets = caddy_presets();
    let engine = caddy_engine(presets.index.clone());
    let hub = HubServer::start(presets.index.clone()).await;
    bounded(300, async {
        // cerberus starts the engine itself and pulls from its LAPI.
        let config = cerberus_config(&engine, &hub.url);
        let app = cerberus::app::start(config.clone()).await.unwrap();
        let admin = AdminClient::new(&app);
        support::wait_for("the first sync from the managed engine", 90, || {
            app.stats.first_sync_done.load(Ordering::Relaxed)
        })
        .await;
        let (_, s) = admin.get("/status").await;
        assert_eq!(s["mode"], "engine", "{s}");
        assert_eq!(s["engine"]["status"]["state"], "running", "{s}");

        // The presets, through the admin API; each install reloads the engine.
        for (i, preset) in presets.install.iter().enumerate() {
            let (code, report) = admin
                .post("/hub/presets/install", json!({ "name": preset }))
                .await;
            assert_eq!(code, 200, "install {preset}: {report}");
            assert_eq!(report["changed"], true, "{report}");
            assert_eq!(report["validated"], true, "{report}");
            assert_eq!(report["reloaded"], true, "{report}");
            engine.wait_reloaded(i + 1, 60).await;
        }
        let (code, list) = admin.get("/hub/presets?q=caddy&type=collections").await;
        assert_eq!(code, 200, "{list}");
        let caddy = list["presets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == presets.collection)
            .unwrap_or_else(|| panic!("{} not listed: {list}", presets.collection));
        assert_eq!(caddy["installed"], true, "{caddy}");
        let scenarios = engine.cscli(&["scenarios", "list"]);
        assert!(scenarios.contains(presets.scenario), "{scenarios}");

        let port = free_port();
        let caddy = Caddy::start(
            &caddy_bin,
            &caddyfile(port, &engine.caddy_log, &config.socket),
        );
        let url = format!("http://127.0.0.1:{port}/");
        wait_status("Caddy to serve the neighbour", NEIGHBOUR, &url, 200, 30).await;
        assert_eq!(status(&browser_from(ATTACKER), &url, None).await, Some(200));

        let (missing, banned_early) = probe(&url).await;
        assert!(missing > 10, "only {missing} probes reached Caddy's 404");
        // Caddy logged the real client address (the engine bans what it reads there).
        assert!(
            logged_from(&engine.caddy_log, ATTACKER) >= missing,
            "Caddy's access log lacks the attacker's requests"
        );

        let t = Instant::now();
        let attacker = browser_from(ATTACKER);
        loop {
            if status(&attacker, &url, None).await == Some(403) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let log = engine.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let first = std::fs::read_to_string(&engine.caddy_log).unwrap_or_default();
                panic!(
                    "the engine's ban of the prober did not reach Caddy within 60s.\n\
                     engine alerts: {}\nengine metrics: {}\nengine log (last lines, newest first):\n{}\n\
                     first Caddy log line: {}",
                    engine.cscli(&["alerts", "list"]),
                    engine.cscli(&["metrics"]),
                    tail.join("\n"),
                    first.lines().next().unwrap_or("(none)")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "engine_e2e: banned {} ms after the last probe ({banned_early} probes already got 403)",
            t.elapsed().as_millis()
        );
        assert_eq!(
            status(&browser_from(NEIGHBOUR), &url, None).await,
            Some(200),
            "the neighbour is not affected"
        );
        assert_eq!(
            status(&browser_from(ATTACKER), &format!("{url}anything"), None).await,
            Some(403),
            "every path is closed to the prober"
        );

        // The ban came from the engine's own detection, not from a manual decision.
        let (code, body) = admin.get(&format!("/decisions?ip={ATTACKER}")).await;
        assert_eq!(code, 200, "{body}");
        let decisions = body["decisions"].as_array().unwrap();
        assert!(!decisions.is_empty(), "{body}");
        assert!(
            decisions.iter().all(|d| d["origin"] == "crowdsec"
                && d["type"] == "ban"
                && d["value"] == ATTACKER),
            "{body}"
        );
        assert!(
            decisions.iter().any(|d| {
                d["scenario"]
                    .as_str()
                    .is_some_and(|s| s.contains("http-probing"))
            }),
            "{body}"
        );
        let (code, body) = admin.get(&format!("/decisions?ip={NEIGHBOUR}")).await;
        assert_eq!((code, body["total"].as_u64()), (200, Some(0)), "{body}");

        // Unban through the admin API: lifted at once, and deleted in the engine's LAPI
        // (cerberus writes there with the agent's machine login).
        let (code, body) = admin.post("/unban", json!({"value": ATTACKER})).await;
        assert_eq!(code, 200, "{body}");
        assert!(
            !body["lifted"].as_array().unwrap().is_empty(),
            "the unban lifted the engine's decision: {body}"
        );
        assert!(body["lapi"]["deleted"].as_u64() >= Some(1), "{body}");
        wait_status("the unban to reach Caddy", ATTACKER, &url, 200, 5).await;
        assert_eq!(status(&browser_from(NEIGHBOUR), &url, None).await, Some(200));
        let left = engine.cscli(&["decisions", "list", "-o", "json"]);
        assert!(!left.contains(ATTACKER), "still in the engine: {left}");
        // And it stays lifted across the next pulls from the engine.
        tokio::time::sleep(config.update_frequency * 3).await;
        assert_eq!(status(&browser_from(ATTACKER), &url, None).await, Some(200));

        drop(caddy);
        app.stop().await;
        assert_eq!(
            engine.processes(),
            Vec::<u32>::new(),
            "the engine stopped with cerberus"
        );
        let text = logs.text();
        assert!(text.contains("[CROWDSEC_STARTUP] engine mode"), "{text}");
    })
    .await;
    eprintln!(
        "engine_e2e: whole loop in {} s",
        began.elapsed().as_secs_f32()
    );
}
