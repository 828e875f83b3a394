//! The community blocklist in engine mode, on the CrowdSec version under test (1.4.6, or
//! 1.7.8 with `CERBERUS_CROWDSEC_VERSION=1.7.8`): with online credentials that exist, the
//! managed engine runs with its central API (no `-no-capi`) against a stand-in
//! (tests/support/capi.rs); the community blocklist's decision reaches cerberus' hot path
//! with origin `CAPI`, and on 1.7.8 a console blocklist subscription (`links.blocklists`
//! of `/v3/decisions/stream`) arrives with origin `lists`. With the stand-in down, the
//! engine still runs and local bans work. Without credentials, the engine runs with
//! `-no-capi` and `/status` says why.

mod support;

use cerberus::app::Running;
use cerberus::config::Config;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use support::admin::AdminClient;
use support::capi::{Capi, Mode, BLOCKLIST, BLOCKLIST_IP, COMMUNITY_IP};
use support::managed_engine::{bins, bounded, Engine, EngineOptions};

fn config(engine: &Engine) -> Config {
    support::managed_engine::engine_mode_config(engine)
}

async fn start(engine: &Engine) -> Running {
    std::fs::create_dir_all(&engine.data_dir).unwrap();
    let app = cerberus::app::start(config(engine))
        .await
        .expect("cerberus starts");
    support::wait_for("the first sync from the engine", 90, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;
    app
}

/// An engine whose config names online credentials, written to point at `capi`.
fn engine_with_credentials(capi: &Capi) -> Engine {
    let engine = online_engine();
    write_online_credentials(&engine, capi);
    engine
}

fn online_engine() -> Engine {
    Engine::with(EngineOptions {
        online_client: true,
        ..EngineOptions::default()
    })
}

fn write_online_credentials(engine: &Engine, capi: &Capi) {
    std::fs::write(
        engine.online_credentials(),
        format!(
            "url: {}\nlogin: {}\npassword: {}\n",
            capi.url, capi.login, capi.password
        ),
    )
    .unwrap();
}

fn origin(app: &Running, ip: &str) -> Option<String> {
    let a = app.decider.answer(ip.parse::<IpAddr>().unwrap());
    (!a.allows()).then(|| a.origin.as_deref().unwrap_or("").to_string())
}

/// The engine's central API pulls start once a machine has logged in to its LAPI with a
/// non-empty scenario list (`apic.Pull`, "scenario list is empty, will not pull yet");
/// this engine has no hub items, so log in as its agent with one scenario.
async fn agent_login_with_a_scenario(engine: &Engine) {
    let creds: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(engine.root.join("local_api_credentials.yaml")).unwrap(),
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/watchers/login", engine.url()))
        .header("User-Agent", "crowdsec/cerberus-tests")
        .json(&json!({
            "machine_id": creds["login"],
            "password": creds["password"],
            "scenarios": ["crowdsecurity/http-probing"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
}

/// The stand-in's port as the engine's credentials name it (`127.0.0.1:PORT`).
fn capi_port(_status: &Value, engine: &Engine) -> String {
    let creds = std::fs::read_to_string(engine.online_credentials()).unwrap();
    let url = creds
        .lines()
        .find_map(|l| l.strip_prefix("url: "))
        .unwrap()
        .trim_end_matches('/');
    url.trim_start_matches("http://").to_string()
}

fn engine_args(status: &Value) -> String {
    let pid = status["engine"]["status"]["pid"].as_u64().unwrap();
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_community_blocklist_reaches_the_hot_path_with_origin_capi() {
    let logs = support::logs();
    let capi = Capi::start(Mode::Ok).await;
    let engine = engine_with_credentials(&capi);
    bounded(240, async {
        let app = start(&engine).await;
        let admin = AdminClient::new(&app);
        let (_, st) = admin.get("/status").await;
        assert_eq!(st["engine"]["status"]["capi"]["enabled"], true, "{st}");
        assert!(
            !engine_args(&st).contains("-no-capi"),
            "{}",
            engine_args(&st)
        );
        agent_login_with_a_scenario(&engine).await;
        support::wait_for(
            "the community blocklist's decision in the hot path",
            120,
            || origin(&app, COMMUNITY_IP).is_some(),
        )
        .await;
        assert_eq!(origin(&app, COMMUNITY_IP).as_deref(), Some("CAPI"));
        // The engine logged in to the central API with its online credentials.
        let login = capi.seen_at(&capi.path("watchers/login"));
        assert!(!login.is_empty(), "{:?}", capi.seen());
        assert_eq!(login[0].json()["machine_id"], capi.login.as_str());
        if support::lapi::version().is_modern() {
            // 1.5+: the console blocklist subscription of links.blocklists.
            support::wait_for("the blocklist subscription's decision", 60, || {
                origin(&app, BLOCKLIST_IP).is_some()
            })
            .await;
            assert_eq!(origin(&app, BLOCKLIST_IP).as_deref(), Some("lists"));
            let a = app.decider.answer(BLOCKLIST_IP.parse().unwrap());
            assert!(
                a.scenario.as_deref().unwrap_or("").contains(BLOCKLIST),
                "{:?}",
                a.scenario
            );
        }
        assert!(
            logs.text().contains("community blocklist on"),
            "{}",
            logs.text()
        );
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_central_api_down_the_engine_runs_and_local_bans_work() {
    support::logs();
    let capi = Capi::start(Mode::Down).await;
    let engine = engine_with_credentials(&capi);
    bounded(240, async {
        let app = start(&engine).await;
        let admin = AdminClient::new(&app);
        let (_, st) = admin.get("/status").await;
        assert_eq!(st["engine"]["status"]["state"], "running", "{st}");
        if support::lapi::version().is_modern() {
            // Version-specific: 1.7.8 will not start its LAPI while the central API does
            // not answer its login, so cerberus started it again with -no-capi and says why.
            assert!(
                engine_args(&st).contains("-no-capi"),
                "{}",
                engine_args(&st)
            );
            let capi = &st["engine"]["status"]["capi"];
            assert_eq!(capi["enabled"], false, "{st}");
            let why = capi["reason"].as_str().unwrap();
            assert!(
                why.contains("did not answer") && why.contains(&capi_port(&st, &engine)),
                "{why}"
            );
            // Classified as the heartbeat and diagnose classify it, with the fix.
            assert_eq!(capi["cause"], "refused", "{st}");
            assert!(
                capi["fix"].as_str().unwrap().contains(&format!(
                    "outbound TCP to {} must be open",
                    capi_port(&st, &engine)
                )),
                "{st}"
            );
        } else {
            // 1.4.6 starts with its central API down and keeps trying.
            assert!(!engine_args(&st).contains("-no-capi"));
        }
        engine.cscli(&["decisions", "add", "--ip", "192.0.2.99", "--duration", "1h"]);
        support::wait_for("the local ban in the hot path", 60, || {
            origin(&app, "192.0.2.99").is_some()
        })
        .await;
        assert_eq!(origin(&app, "192.0.2.99").as_deref(), Some("cscli"));
        let (_, st) = admin.get("/status").await;
        assert_eq!(st["engine"]["status"]["state"], "running", "{st}");
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_online_credentials_the_engine_runs_with_no_capi_and_says_why() {
    support::logs();
    let engine = Engine::new();
    bounded(240, async {
        let app = start(&engine).await;
        let admin = AdminClient::new(&app);
        let (_, st) = admin.get("/status").await;
        let capi = &st["engine"]["status"]["capi"];
        assert_eq!(capi["enabled"], false, "{st}");
        let why = capi["reason"].as_str().unwrap();
        assert!(
            why.contains("names no api.server.online_client.credentials_path")
                && why.contains(&engine.config.display().to_string())
                && why.contains("capi-register"),
            "{why}"
        );
        assert!(engine_args(&st).contains("-no-capi"));
        let metrics = reqwest::get(format!(
            "http://{}/metrics",
            app.admin_addr.as_deref().unwrap()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        // The gauge is shared by the tests of this process: only its presence is checked.
        assert!(
            metrics.contains("cerberus_engine_capi_enabled "),
            "{metrics}"
        );
        app.stop().await;
    })
    .await;
}

/// `POST /capi/register` runs `cscli capi register -f CREDENTIALS` and the engine then
/// runs with its central API. The real command always talks to https://api.crowdsec.net/
/// (`CAPIBaseURL` in `cmd/crowdsec-cli/clicapi/capi.go`, no flag to change it), which
/// this machine cannot reach: a wrapper stands in for that one cscli command, writing the
/// credentials file as it does (`login`, `password`, `url`), and passes every other
/// command to the real cscli.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_through_the_admin_api_writes_the_credentials() {
    support::logs();
    let capi = Capi::start(Mode::Ok).await;
    let engine = online_engine();
    let argv_log = engine.root.join("cscli-argv.log");
    let wrapper = engine.script(
        "cscli-capi-register",
        &format!(
            "#!/bin/bash\nprintf '%s\\n' \"$*\" >> '{log}'\n\
             if [[ \" $* \" == *' capi register '* ]]; then\n\
               while (($#)); do [[ $1 == -f ]] && out=$2; shift; done\n\
               printf 'login: {login}\\npassword: {password}\\nurl: {url}\\n' > \"$out\"; exit 0\n\
             fi\nexec '{real}' \"$@\"\n",
            log = argv_log.display(),
            login = capi.login,
            password = capi.password,
            url = capi.url,
            real = bins().cscli.display()
        ),
    );
    bounded(240, async {
        std::fs::create_dir_all(&engine.data_dir).unwrap();
        let mut c = config(&engine);
        c.engine.cscli_bin = wrapper;
        let app = cerberus::app::start(c).await.expect("cerberus starts");
        let admin = AdminClient::new(&app);
        let (status, body) = admin.post_empty("/capi/register").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["capi"]["enabled"], true, "{body}");
        let creds = std::fs::read_to_string(engine.online_credentials()).unwrap();
        assert!(creds.contains(&capi.login), "{creds}");
        let argv = std::fs::read_to_string(&argv_log).unwrap();
        assert!(
            argv.contains(&format!(
                "capi register -f {}",
                engine.online_credentials().display()
            )),
            "{argv}"
        );
        // The engine (which could not start while the file was missing) now runs with
        // its central API.
        support::wait_for("the engine's first sync", 120, || {
            app.stats.first_sync_done.load(Ordering::Relaxed)
        })
        .await;
        let (_, st) = admin.get("/status").await;
        assert_eq!(st["engine"]["status"]["capi"]["enabled"], true, "{st}");
        assert!(
            !engine_args(&st).contains("-no-capi"),
            "{}",
            engine_args(&st)
        );
        app.stop().await;
    })
    .await;
}
