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

/// Through Caddy on `port` (once it serves): `GET /.env` is refused by AppSec (ban),
/// `GET /` is served with `root_body`. Returns the site's base URL.
async fn env_refused_root_served(port: u16, door: &str, root_body: &str) -> String {
    let base = format!("http://127.0.0.1:{port}");
    wait_status(
        "Caddy to serve /",
        "127.0.0.6",
        &format!("{base}/"),
        200,
        30,
    )
    .await;
    let client = client_from("127.0.0.6");
    let r = client.get(format!("{base}/.env")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "GET /.env through {door}");
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET / through {door}");
    assert_eq!(r.text().await.unwrap(), root_body);
    base
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
    env_refused_root_served(port, "forward_auth", "ok").await;
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
            .any(|((origin, remediation), n)| origin == "appsec"
                && remediation == "ban"
                && *n >= 1),
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
    closed_config.admin_listen = Listen::Tcp("127.0.0.1:0".into());
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
    // The status and the diagnostics say whether AppSec answers.
    let admin = |path: &str| {
        http.get(format!(
            "http://{}/api/v1/cerberus/crowdsec{path}",
            closed.admin_addr.as_deref().unwrap()
        ))
        .bearer_auth(&closed.admin_token)
        .send()
    };
    let appsec_status =
        |v: serde_json::Value| v["appsec"]["status"].as_str().unwrap_or("").to_string();
    let connectivity: serde_json::Value = admin("/diagnostics/connectivity")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(appsec_status(connectivity), "answering");
    let status: serde_json::Value = admin("/status").await.unwrap().json().await.unwrap();
    assert_eq!(appsec_status(status), "answering");

    // Running: both follow AppSec's verdicts.
    assert_eq!(ask(&open, "/.env").await.unwrap().status().as_u16(), 403);
    assert_eq!(ask(&closed, "/").await.unwrap().status().as_u16(), 200);

    engine.stop();
    let connectivity: serde_json::Value = admin("/diagnostics/connectivity")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(appsec_status(connectivity), "unreachable");
    let config: serde_json::Value = admin("/diagnostics/config")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        config["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "appsec" && c["status"] == "fail"),
        "diagnose names the AppSec failure: {config}"
    );
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
            metric(
                &m,
                "cerberus_appsec_inspections_total",
                "outcome=\"failed_open\""
            ) >= 1.0,
            "{m}"
        );
        assert!(
            metric(
                &m,
                "cerberus_appsec_inspections_total",
                "outcome=\"failed_closed\""
            ) >= 1.0,
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

/// An upstream that answers 200 "upstream" and records every request body it got.
struct Recorder {
    addr: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                seen.lock().unwrap().push(body.to_vec());
                                Ok::<_, hyper::Error>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(
                                        b"upstream",
                                    )),
                                ))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Recorder { addr, bodies, task }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_inspects_uri_and_body_and_hands_the_body_on_unchanged() {
    let _logs = support::logs();
    let Some(engine) = support::appsec::start().await else {
        return;
    };
    let caddy_bin = tokio::task::spawn_blocking(support::caddy::our_caddy)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(dir.path(), &engine, AppsecFail::Open);
    let socket = config.socket.display().to_string();
    let app = start_daemon(config).await;
    let upstream = Recorder::start().await;
    let (port, off_port) = (free_port(), free_port());
    let site = |port: u16, extra: &str| {
        format!(
            "http://:{port} {{\n\tbind 127.0.0.1\n\tcerberus {{\n\t\tsocket {socket}\n{extra}\t}}\n\t\
             reverse_proxy {}\n}}\n",
            upstream.addr
        )
    };
    let _caddy = Caddy::start(
        &caddy_bin,
        &(site(port, "") + &site(off_port, "\t\tappsec off\n")),
    );
    let base = env_refused_root_served(port, "the module", "upstream").await;
    let client = client_from("127.0.0.6");

    // A rule on the body refuses the POST that carries it; the upstream never sees it.
    let before = upstream.bodies.lock().unwrap().len();
    let r = client
        .post(format!("{base}/form"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(EVIL_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "the body rule refuses the POST");
    assert_eq!(upstream.bodies.lock().unwrap().len(), before);

    // A benign POST: the upstream gets exactly the bytes sent (binary, 200 KiB).
    let benign: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = client
        .post(format!("{base}/upload"))
        .header("Content-Type", "application/octet-stream")
        .body(benign.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        upstream.bodies.lock().unwrap().last().map(Vec::as_slice),
        Some(benign.as_slice()),
        "the upstream received the same bytes"
    );

    // `appsec off` for a site: not inspected.
    let off = format!("http://127.0.0.1:{off_port}");
    wait_status(
        "the appsec-off site",
        "127.0.0.6",
        &format!("{off}/"),
        200,
        30,
    )
    .await;
    let r = client.get(format!("{off}/.env")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "appsec off serves /.env");

    let m = cerberus::metrics::render().expect("a Prometheus recorder");
    assert!(
        metric(
            &m,
            "cerberus_appsec_inspections_total",
            "door=\"socket\",outcome=\"ban\""
        ) >= 2.0,
        "{m}"
    );
    app.stop().await;
}
