//! Engine mode with the CrowdSec version under test (Debian's 1.4.6, or 1.7.8, whose
//! agent takes longer to load: the waits allow for it) as the managed engine: switching protection
//! on starts the engine and decisions added with its cscli reach the hot path; switching
//! it off stops the engine; a restart of cerberus brings the engine back when it was on
//! (and not when it was off); a killed engine is restarted and the sync goes on.

mod support;

use cerberus::app::Running;
use cerberus::config::Config;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::admin::AdminClient;
use support::managed_engine::{bounded, eventually, health_up, Engine};

fn banned(app: &Running, ip: &str) -> bool {
    !app.decider.answer(ip.parse::<IpAddr>().unwrap()).allows()
}

fn config(engine: &Engine) -> Config {
    support::managed_engine::engine_mode_config(engine)
}

async fn start(engine: &Engine) -> Running {
    std::fs::create_dir_all(&engine.data_dir).unwrap();
    cerberus::app::start(config(engine))
        .await
        .expect("cerberus starts")
}

async fn engine_pid(admin: &AdminClient) -> Option<u64> {
    let (_, s) = admin.get("/status").await;
    (s["engine"]["status"]["state"] == "running")
        .then(|| s["engine"]["status"]["pid"].as_u64())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_runs_the_engine_and_its_decisions_reach_the_hot_path() {
    support::logs();
    let engine = Engine::new();
    bounded(480, async {
        let app = start(&engine).await;
        let admin = AdminClient::new(&app);
        support::wait_for("the first sync from the engine", 90, || {
            app.stats.first_sync_done.load(Ordering::Relaxed)
        })
        .await;
        assert!(health_up(&engine.url()).await);
        let (_, s) = admin.get("/status").await;
        assert_eq!(s["mode"], "engine", "{s}");
        assert_eq!(s["engine"]["wanted"], true, "{s}");
        // The diagnostics cover the engine: config, acquisition, credentials, process.
        let (_, diag) = admin.get("/diagnostics/config").await;
        for name in [
            "engine_config",
            "engine_acquisition",
            "engine_credentials",
            "engine",
            "lapi",
            "bouncer_key",
            "watcher",
        ] {
            let c = diag["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name);
            assert_eq!(
                c.map(|c| c["status"].clone()),
                Some("ok".into()),
                "{name}: {diag}"
            );
        }

        engine.cscli(&["decisions", "add", "--ip", "192.0.2.80", "--duration", "4h"]);
        support::wait_for("the engine's decision on the hot path", 20, || {
            banned(&app, "192.0.2.80")
        })
        .await;

        // Off: the engine stops, every lookup passes.
        let (status, _) = admin.post_empty("/disable").await;
        assert_eq!(status, 200);
        eventually("the engine stopped", 30, || async {
            engine.processes().is_empty()
        })
        .await;
        assert!(!health_up(&engine.url()).await);
        assert!(!banned(&app, "192.0.2.80"));
        let (_, s) = admin.get("/status").await;
        assert_eq!(s["engine"]["wanted"], false, "{s}");
        // A log the acquisition names but that does not exist is pointed out.
        let log = engine.caddy_log.clone();
        std::fs::remove_file(&log).unwrap();
        let (_, diag) = admin.get("/diagnostics/config").await;
        let acq = diag["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "engine_acquisition")
            .unwrap()
            .clone();
        assert_eq!(acq["status"], "warn", "{acq}");
        assert!(
            acq["detail"].as_str().unwrap().contains("access.log"),
            "{acq}"
        );
        std::fs::write(&log, "").unwrap();

        // On again: the engine is back and new decisions arrive.
        let (status, _) = admin.post_empty("/enable").await;
        assert_eq!(status, 200);
        eventually("the engine back", 90, || async {
            health_up(&engine.url()).await
        })
        .await;
        assert!(banned(&app, "192.0.2.80"), "the known decision stays");
        engine.cscli(&["decisions", "add", "--ip", "192.0.2.81", "--duration", "4h"]);
        support::wait_for("a decision after the restart", 90, || {
            banned(&app, "192.0.2.81")
        })
        .await;

        // Killed: restarted by cerberus, and the sync goes on.
        eventually("the engine's pid", 30, || async {
            engine_pid(&admin).await.is_some()
        })
        .await;
        let pid = engine_pid(&admin).await.unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        eventually("the engine restarted", 90, || async {
            matches!(engine_pid(&admin).await, Some(p) if p != pid)
                && health_up(&engine.url()).await
        })
        .await;
        let (_, s) = admin.get("/status").await;
        assert!(
            s["engine"]["status"]["restarts"].as_u64().unwrap() >= 1,
            "{s}"
        );
        engine.cscli(&["decisions", "add", "--ip", "192.0.2.82", "--duration", "4h"]);
        support::wait_for("a decision after the crash", 90, || {
            banned(&app, "192.0.2.82")
        })
        .await;

        // cerberus stops: so does the engine. It starts again with cerberus.
        app.stop().await;
        assert!(
            engine.processes().is_empty(),
            "the engine outlived cerberus"
        );
        let app = start(&engine).await;
        let admin = AdminClient::new(&app);
        eventually("the engine back with cerberus", 90, || async {
            health_up(&engine.url()).await
        })
        .await;
        engine.cscli(&["decisions", "add", "--ip", "192.0.2.83", "--duration", "4h"]);
        support::wait_for("a decision after cerberus restarted", 90, || {
            banned(&app, "192.0.2.83")
        })
        .await;

        // Off, then a restart of cerberus: the engine stays off.
        let (status, _) = admin.post_empty("/disable").await;
        assert_eq!(status, 200);
        app.stop().await;
        let app = start(&engine).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            engine.processes().is_empty(),
            "the engine started although protection is off"
        );
        let (_, s) = AdminClient::new(&app).get("/status").await;
        assert_eq!(s["enabled"], false, "{s}");
        assert_eq!(
            s["engine"]["status"]["state"],
            Value::from("stopped"),
            "{s}"
        );
        app.stop().await;
    })
    .await;
}
