//! End to end with CrowdSec 1.7.8's AppSec component and today's
//! `crowdsecurity/appsec-virtual-patching` and `appsec-generic-rules`
//! (`support::appsec`): through Debian's Caddy with forward_auth, through our Caddy with
//! the module (body included, and handed to the upstream unchanged), and with AppSec
//! stopped under `appsec_fail: open` and `closed`. Skipped, saying so, on CrowdSec 1.4.6.

mod support;

use cerberus::config::{AppsecFail, Config, Listen};
use std::path::Path;
use std::sync::atomic::Ordering;
use support::appsec::AppsecEngine;
use support::caddy::{client_from, free_port, wait_status, Caddy};

const DEBIAN_CADDY: &str = "/usr/bin/caddy";
/// Matched by `crowdsecurity/generic-freemarker-ssti` (zones RAW_BODY and ARGS).
const EVIL_BODY: &str = "x=${\"freemarker.template.utility.Execute\"?new()(\"id\")}";

fn daemon_config(dir: &Path, engine: &AppsecEngine, fail: AppsecFail) -> Config {
    let key = engine.lapi.new_bouncer_key(&format!(
        "cerberus-{}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let mut config = support::config(dir, Some(&engine.lapi.url), Some(&key));
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    config.appsec.url = Some(engine.url.clone());
    config.appsec.fail = fail;
    // A loaded 2-core machine: the verdicts must not turn into timeouts here.
    config.appsec.timeout = std::time::Duration::from_secs(5);
    config
}

async fn start_daemon(config: Config) -> cerberus::app::Running {
    let app = cerberus::app::start(config).await.unwrap();
    support::wait_for("first sync", 30, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;
    app
}

fn forward_auth_caddy(port: u16, upstream: &str) -> Caddy {
    Caddy::start(
        DEBIAN_CADDY,
        &format!(
            "http://:{port} {{\n\tbind 127.0.0.1\n\tforward_auth {upstream} {{\n\t\turi /\n\t\t\
             copy_headers X-Cerberus-Remediation\n\t}}\n\trespond \"ok\"\n}}\n"
        ),
    )
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.split(',').all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_through_debian_caddy_refuses_env_and_serves_root() {
    let _logs = support::logs();
    let Some(engine) = support::appsec::start().await else {
        return;
    };
    assert!(
        Path::new(DEBIAN_CADDY).exists(),
        "{DEBIAN_CADDY} missing: apt-get install -y caddy"
    );
    let dir = tempfile::tempdir().unwrap();
    let app = start_daemon(daemon_config(dir.path(), &engine, AppsecFail::Open)).await;
    let port = free_port();
    let _caddy = forward_auth_caddy(port, app.forward_auth_addr.as_deref().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_status("Caddy to serve /", "127.0.0.6", &format!("{base}/"), 200, 30).await;
    let client = client_from("127.0.0.6");
    let r = client.get(format!("{base}/.env")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "GET /.env through forward_auth");
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert!(
        engine.log().contains("WAF block"),
        "the engine logged the block:\n{}",
        engine.log()
    );
    // Counted: the refusal by origin appsec in the usage metrics, the outcome in Prometheus.
    let usage = app.decider.usage().totals();
    assert!(
        usage
            .dropped
            .iter()
            .any(|((origin, remediation), n)| origin == "appsec" && remediation == "ban" && *n >= 1),
        "usage metrics count the refusal with origin appsec: {:?}",
        usage.dropped
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appsec_stopped_fails_open_or_closed_as_configured() {
    let logs = support::logs();
    let Some(mut engine) = support::appsec::start().await else {
        return;
    };
    let open_dir = tempfile::tempdir().unwrap();
    let closed_dir = tempfile::tempdir().unwrap();
    let mut open_config = daemon_config(open_dir.path(), &engine, AppsecFail::Open);
    let mut closed_config = daemon_config(closed_dir.path(), &engine, AppsecFail::Closed);
    for c in [&mut open_config, &mut closed_config] {
        c.appsec.timeout = std::time::Duration::from_millis(500);
    }
    let open = start_daemon(open_config).await;
    let closed = start_daemon(closed_config).await;
    let http = reqwest::Client::new();
    let ask = |app: &cerberus::app::Running, path: &str| {
        let url = format!("http://{}/", app.forward_auth_addr.as_deref().unwrap());
        http.get(url)
            .header("X-Forwarded-For", "192.0.2.10")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", path.to_string())
            .header("X-Forwarded-Host", "example.com")
            .send()
    };
    // Running: both follow AppSec's verdicts.
    assert_eq!(ask(&open, "/.env").await.unwrap().status().as_u16(), 403);
    assert_eq!(ask(&closed, "/").await.unwrap().status().as_u16(), 200);

    engine.stop();
    let r = ask(&open, "/").await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "appsec_fail: open serves");
    let r = ask(&closed, "/").await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "appsec_fail: closed refuses");
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    let text = logs.text();
    assert!(
        text.contains("gave no verdict") && text.contains("request served (appsec_fail: open)"),
        "the open failure is logged:\n{text}"
    );
    assert!(
        text.contains("request refused (appsec_fail: closed)"),
        "the closed failure is logged:\n{text}"
    );
    // Counted in Prometheus (one recorder per process: the two daemons share it) and,
    // for the refusal, in the usage metrics with origin appsec.
    if let Some(m) = cerberus::metrics::render() {
        assert!(
            metric(&m, "cerberus_appsec_inspections_total", "outcome=\"failed_open\"") >= 1.0,
            "{m}"
        );
        assert!(
            metric(&m, "cerberus_appsec_inspections_total", "outcome=\"failed_closed\"") >= 1.0,
            "{m}"
        );
        assert!(
            metric(&m, "cerberus_appsec_errors_total", "reason=\"unreachable\"") >= 2.0,
            "{m}"
        );
    } else {
        panic!("no Prometheus recorder in this test binary");
    }
    let dropped = closed.decider.usage().totals().dropped;
    assert!(
        dropped.iter().any(|((o, _), n)| o == "appsec" && *n >= 1),
        "{dropped:?}"
    );
    open.stop().await;
    closed.stop().await;
}
