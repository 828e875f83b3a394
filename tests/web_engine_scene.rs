//! The stage for the browser test of the engine pages (tests/browser/engine.test.mjs):
//! cerberus in engine mode, running the managed CrowdSec engine (Debian's 1.4.6, unpacked
//! by scripts/crowdsec-lapi.sh), with presets from a loopback hub (the real hub index of
//! 2023-03-01 when `support::engine_env` finds it, else the project's own small index)
//! and console enrollment through the real `cscli` against the central-API stand-in
//! (tests/support/capi.rs, answering by the key: `expired...` keys have expired).
//!
//! Not a test by itself: it is `#[ignore]`d, and the browser test starts it with
//! `cargo test --test web_engine_scene -- --ignored --nocapture`, reads the one line
//! `SCENE {json}` it prints (the console's address and token, what to search for and
//! install, where the engine's config is), drives chromium, and closes its stdin; the
//! scene then stops cerberus, and the engine, hub and stand-in go with it (after 10
//! minutes at most).

mod support;

use serde_json::json;
use std::io::Read as _;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::capi::{Capi, EngineConfig, Mode, EXPIRED_KEY_PREFIX};
use support::engine_env::{
    caddy_engine, hub_fixtures, index_2023, own_caddy_index, HubServer, INDEX_2023,
};
use support::managed_engine::{bins, engine_mode_config};

/// What the browser searches for and installs: a word of the item's description (not of
/// its name, so that the search is shown to read descriptions) and the item.
struct Presets {
    index: Vec<u8>,
    search_word: &'static str,
    search_hit: &'static str,
    install: &'static str,
    real: bool,
}

fn presets() -> Presets {
    if hub_fixtures().join(INDEX_2023).exists() {
        // The 2023 http-cve has no `description`; its long description opens with
        // "A collection of http specific CVEs :", which the hub search reads instead.
        Presets {
            index: index_2023(),
            search_word: "specific",
            search_hit: "crowdsecurity/http-cve",
            install: "crowdsecurity/http-cve",
            real: true,
        }
    } else {
        eprintln!(
            "hub fixtures not found in {} (set CERBERUS_HUB_FIXTURES): the browser searches \
             and installs the project's own cerberus/caddy-probing",
            hub_fixtures().display()
        );
        // "Caddy: parser and probing detection".
        Presets {
            index: own_caddy_index(),
            search_word: "detection",
            search_hit: "cerberus/caddy-probing",
            install: "cerberus/caddy-probing",
            real: false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the stage of tests/browser/engine.test.mjs, started by it"]
async fn scene() {
    support::logs();
    let presets = presets();
    let engine = caddy_engine(presets.index.clone());
    let hub = HubServer::start(presets.index.clone()).await;
    let capi = Capi::start(Mode::ByKey).await;
    let console_engine = EngineConfig::new(&capi);

    let mut config = engine_mode_config(&engine);
    config.engine.hub_url = hub.url.clone();
    config.heartbeat_interval = Duration::ZERO;
    // Enrollment through an engine config whose online credentials name the stand-in.
    config.console_engine_config = Some(console_engine.config.clone());
    config.console_cscli_bin = console_engine.cscli.clone();
    let app = tokio::time::timeout(Duration::from_secs(60), cerberus::app::start(config))
        .await
        .expect("cerberus starts in time")
        .expect("cerberus starts");
    // The engine runs (installs validate with it and reload it) once it has synced.
    support::wait_for("the first sync from the managed engine", 90, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    let line = json!({
        "base": format!("http://{}", app.admin_addr.as_deref().expect("admin listening")),
        "token": app.admin_token,
        "search_word": presets.search_word,
        "search_hit": presets.search_hit,
        "install": presets.install,
        "real_hub": presets.real,
        "expired_key_prefix": EXPIRED_KEY_PREFIX,
        "crowdsec": bins().crowdsec,
        "engine_config": engine.config,
    });
    println!("SCENE {line}");

    // Up until the browser test closes our stdin (or ends), at most 10 minutes, so that a
    // scene started by hand (`--include-ignored`) stops by itself.
    // A thread of its own (not tokio's blocking pool, which the runtime waits for).
    let (tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    if tokio::time::timeout(Duration::from_secs(600), closed)
        .await
        .is_err()
    {
        eprintln!("scene: stdin still open after 10 minutes; stopping");
    }
    eprintln!(
        "scene: stopping; the hub answered {} requests, the stand-in {} enrollments",
        hub.requests.load(Ordering::SeqCst),
        capi.seen_at(&capi.path("watchers/enroll")).len()
    );
    app.stop().await;
}
