//! Usage metrics pushed to LAPI (`POST /v1/usage-metrics`): against a stand-in LAPI that
//! records what it is sent, the body's shape and headers, counters sent as differences
//! (the accepted pushes add up to exactly the traffic made), a failed push (500) whose
//! counts go with the next one, a 404 logged once; and against the real LAPI of the
//! version under test: 1.4.6 has no such route (the push gets 404 and the decision sync
//! keeps working), 1.7.8 accepts the pushes and `cscli metrics show bouncers` shows them.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::lapi::Lapi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(200);

/// One usage push the stand-in received, and the status it answered.
#[derive(Debug, Clone)]
struct Push {
    head: String,
    body: Value,
    status: u16,
}

/// A stand-in LAPI: `startup=true` gets `decisions`, other pulls an empty delta, and
/// `POST /v1/usage-metrics` is recorded and answered with the current `status`.
struct Mock {
    url: String,
    status: Arc<AtomicU16>,
    pushes: Arc<Mutex<Vec<Push>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(decisions: String, status: u16) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(status));
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let (st, pu) = (status.clone(), pushes.clone());
        let decisions = Arc::new(decisions);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, pu, decisions) = (st.clone(), pu.clone(), decisions.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(LIMIT, answer(sock, st, pu, decisions)).await;
                });
            }
        });
        Mock {
            url,
            status,
            pushes,
            task,
        }
    }

    fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().unwrap().clone()
    }
}

async fn answer(
    mut sock: tokio::net::TcpStream,
    status: Arc<AtomicU16>,
    pushes: Arc<Mutex<Vec<Push>>>,
    decisions: Arc<String>,
) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap_or(0);
    while got.len() < head_end + length {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let request_line = head.lines().next().unwrap_or("").to_string();
    let (code, text, body) = if request_line.starts_with("POST /v1/usage-metrics ") {
        let code = status.load(Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&got[head_end..head_end + length])
            .unwrap_or_else(|e| panic!("usage body is not JSON: {e}"));
        pushes.lock().unwrap().push(Push {
            head: head.clone(),
            body,
            status: code,
        });
        let text = match code {
            201 => "Created",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        (code, text, String::new())
    } else if request_line.starts_with("GET /v1/decisions/stream") {
        let body = if request_line.contains("startup=true") {
            decisions.as_str().to_string()
        } else {
            r#"{"new":null,"deleted":null}"#.to_string()
        };
        (200, "OK", body)
    } else {
        (404, "Not Found", String::new())
    };
    let out = format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(out.as_bytes()).await;
}

fn items(push: &Push) -> &Vec<Value> {
    push.body["remediation_components"][0]["metrics"][0]["items"]
        .as_array()
        .expect("items is a list")
}

/// The value of `processed` in one push.
fn processed(push: &Push) -> u64 {
    let found: Vec<u64> = items(push)
        .iter()
        .filter(|i| i["name"] == "processed")
        .map(|i| i["value"].as_u64().expect("processed is a whole number"))
        .collect();
    assert_eq!(found.len(), 1, "one processed item: {}", push.body);
    found[0]
}

/// The value of `dropped{origin,remediation}` in one push (0 when absent).
fn dropped(push: &Push, origin: &str, remediation: &str) -> u64 {
    items(push)
        .iter()
        .filter(|i| {
            i["name"] == "dropped"
                && i["labels"]["origin"] == origin
                && i["labels"]["remediation"] == remediation
        })
        .map(|i| i["value"].as_u64().expect("dropped is a whole number"))
        .sum()
}

fn accepted_sums(mock: &Mock) -> (u64, u64) {
    let pushes: Vec<Push> = mock
        .pushes()
        .into_iter()
        .filter(|p| p.status == 201)
        .collect();
    (
        pushes.iter().map(processed).sum(),
        pushes.iter().map(|p| dropped(p, "lists:bulk", "ban")).sum(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn start(url: &str, key: &str) -> (cerberus::app::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(url), Some(key));
    config.usage_metrics_interval = INTERVAL;
    let app = tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .unwrap()
        .unwrap();
    support::wait_for("first sync", 20, || {
        app.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;
    (app, dir)
}

/// Looks up each address through the socket door.
async fn lookups(app: &cerberus::app::Running, addrs: &[&str]) {
    let client =
        bouncer_api::Client::new(bouncer_api::ClientConfig::new(&app.config.socket).timeout(LIMIT));
    let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
    client.lookup_many(&addrs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_differences_and_keep_counts_after_a_failure() {
    let started = cerberus::clock::now_secs_precise() as u64;
    // Three bans from a blocklist: origin `lists`, scenario `bulk`.
    let mock = Mock::start(support::startup_body(3), 201).await;
    let logs = support::logs();
    let (app, _dir) = start(&mock.url, "usage-key").await;

    // 2 bans, 3 allows.
    lookups(
        &app,
        &[
            "10.0.0.1",
            "10.0.0.2",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
        ],
    )
    .await;
    support::wait_for("the first lookups pushed", 20, || {
        accepted_sums(&mock) == (5, 2)
    })
    .await;

    // The shape of a push.
    let push = mock.pushes().last().cloned().unwrap();
    let head = push.head.to_ascii_lowercase();
    assert!(
        push.head.starts_with("POST /v1/usage-metrics HTTP/1.1\r\n"),
        "{}",
        push.head
    );
    let agent = format!("user-agent: cerberus/{}\r\n", env!("CARGO_PKG_VERSION"));
    assert!(head.contains(&agent), "{}", push.head);
    assert!(head.contains("x-api-key: usage-key\r\n"), "{}", push.head);
    assert!(
        head.contains("content-type: application/json"),
        "{}",
        push.head
    );
    let components = push.body["remediation_components"].as_array().unwrap();
    assert_eq!(components.len(), 1);
    let c = &components[0];
    assert_eq!(c["name"], "cerberus");
    assert_eq!(c["type"], "crowdsec-caddy-bouncer");
    assert_eq!(c["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(c["feature_flags"], serde_json::json!([]));
    let startup = c["utc_startup_timestamp"].as_u64().unwrap();
    let now = cerberus::clock::now_secs_precise() as u64;
    assert!(startup >= started && startup <= now, "{startup}");
    assert!(!c["os"]["name"].as_str().unwrap().is_empty());
    assert!(!c["os"]["version"].as_str().unwrap().is_empty());
    let metrics = c["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 1);
    let meta = &metrics[0]["meta"];
    assert!(meta["window_size_seconds"].as_u64().unwrap() >= 1);
    let ts = meta["utc_now_timestamp"].as_u64().unwrap();
    assert!(ts >= startup && ts <= now, "{ts}");
    for item in items(&push) {
        let (name, unit) = (
            item["name"].as_str().unwrap(),
            item["unit"].as_str().unwrap(),
        );
        match name {
            "processed" => assert_eq!(unit, "request"),
            "dropped" => {
                assert_eq!(unit, "request");
                assert!(item["labels"]["origin"].is_string());
                assert!(item["labels"]["remediation"].is_string());
            }
            "active_decisions" => {
                assert_eq!(unit, "ip");
                assert_eq!(item["labels"]["origin"], "lists:bulk");
                assert_eq!(item["value"], 3);
            }
            other => panic!("unexpected item {other}: {}", push.body),
        }
    }
    assert!(items(&push).iter().any(|i| i["name"] == "active_decisions"));

    // More traffic: the pushes after carry only the new requests.
    lookups(&app, &["10.0.0.0", "192.0.2.4"]).await;
    support::wait_for("the second lookups pushed", 20, || {
        accepted_sums(&mock) == (7, 3)
    })
    .await;

    // LAPI fails: the pushes meanwhile are refused; their counts are not lost.
    mock.status.store(500, Ordering::SeqCst);
    let seen = mock.pushes().len();
    lookups(&app, &["10.0.0.1", "10.0.0.2", "192.0.2.9"]).await;
    support::wait_for("a refused push carrying the new lookups", 20, || {
        mock.pushes()[seen..]
            .iter()
            .any(|p| p.status == 500 && processed(p) == 3)
    })
    .await;
    support::wait_for("a second refused push", 20, || {
        mock.pushes()[seen..]
            .iter()
            .filter(|p| p.status == 500)
            .count()
            >= 2
    })
    .await;
    assert_eq!(accepted_sums(&mock), (7, 3));
    mock.status.store(201, Ordering::SeqCst);
    support::wait_for("the kept counts pushed", 20, || {
        accepted_sums(&mock) == (10, 5)
    })
    .await;
    // The push accepted after the failures carried all three.
    let first_ok = mock.pushes()[seen..]
        .iter()
        .find(|p| p.status == 201)
        .cloned()
        .unwrap();
    assert_eq!(processed(&first_ok), 3);
    assert_eq!(dropped(&first_ok, "lists:bulk", "ban"), 2);
    assert!(logs.text().contains("usage metrics push to"));
    app.stop().await;
    // Nothing is sent after stop.
    let n = mock.pushes().len();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(mock.pushes().len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapi_without_the_route_is_logged_once() {
    let logs = support::logs();
    let mock = Mock::start(support::startup_body(1), 404).await;
    let (app, _dir) = start(&mock.url, "k").await;
    lookups(&app, &["10.0.0.0", "192.0.2.1"]).await;
    // The push after the next one took its counts after the lookups.
    let n = mock.pushes().len();
    support::wait_for("two more pushes", 20, || {
        mock.pushes().len() >= (n + 2).max(4)
    })
    .await;
    assert!(mock.pushes().iter().all(|p| p.status == 404));
    let line = format!("LAPI at {} does not accept usage metrics", mock.url);
    assert_eq!(logs.text().matches(&line).count(), 1, "{}", logs.text());
    // Counted, and the 404 windows are dropped rather than piled up: a LAPI that starts
    // accepting gets only what came after.
    let text = cerberus::metrics::render().unwrap();
    let not_found: f64 = text
        .lines()
        .find(|l| l.starts_with("cerberus_usage_metrics_push_total{outcome=\"not_found\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(not_found >= 4.0, "{text}");
    mock.status.store(201, Ordering::SeqCst);
    support::wait_for("an accepted push", 20, || {
        mock.pushes().iter().any(|p| p.status == 201)
    })
    .await;
    let first_ok = mock.pushes().into_iter().find(|p| p.status == 201).unwrap();
    assert_eq!(processed(&first_ok), 0, "{}", first_ok.body);
    assert!(logs.text().contains("LAPI accepts usage metrics now"));
    app.stop().await;
}

/// Version-specific, both sides, on the real LAPI of the version under test: 1.4.6 has
/// no usage-metrics route (404, logged once, the sync goes on); 1.7.8 (1.6.3 and later)
/// takes the pushes and `cscli metrics show bouncers` lists cerberus' counts by origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_lapi_404_on_1_4_6_and_shown_by_cscli_on_1_7_8() {
    if support::lapi::version().is_modern() {
        accepted_and_shown_by_cscli().await;
    } else {
        answers_404_and_sync_goes_on().await;
    }
}

/// 1.7.8: `cscli metrics show bouncers` needs prometheus on (scripts/crowdsec-lapi.sh
/// turns it on for versions after 1.4.6).
async fn accepted_and_shown_by_cscli() {
    let logs = support::logs();
    let lapi = Lapi::start();
    let key = lapi.new_bouncer_key("cerberus-usage");
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.77", "--duration", "1h"]);
    let (app, _dir) = start(&lapi.url, &key).await;
    support::wait_for("the decision synced", 20, || {
        !app.decider.answer(ip("192.0.2.77")).allows()
    })
    .await;
    // 3 dropped (origin cscli), 2 allowed.
    lookups(
        &app,
        &[
            "192.0.2.77",
            "192.0.2.77",
            "192.0.2.77",
            "192.0.2.1",
            "192.0.2.2",
        ],
    )
    .await;
    let mut shown = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        shown = lapi.cscli(&["metrics", "show", "bouncers"]);
        if shown.contains("cerberus-usage") && shown.contains("cscli (manual") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("cscli metrics show bouncers:\n{shown}");
    assert!(shown.contains("cerberus-usage"), "{shown}");
    // Rows `| Origin | active_decisions | dropped | processed |`.
    let cells = |first: &str| -> Vec<String> {
        shown
            .lines()
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|row| row.first().is_some_and(|c| c.starts_with(first)))
            .unwrap_or_else(|| panic!("no {first} row in:\n{shown}"))
    };
    assert_eq!(cells("cscli")[1..3], ["1", "3"], "{shown}");
    assert_eq!(cells("Total")[1..], ["1", "3", "5"], "{shown}");
    // (The logs are shared with the other tests of this file: look for this LAPI only.)
    assert!(
        !logs.text().contains(&format!(
            "LAPI at {} does not accept usage metrics",
            lapi.url
        )),
        "{}",
        logs.text()
    );
    assert_eq!(app.stats.pulls_failed.load(Ordering::Relaxed), 0);
    app.stop().await;
}

/// 1.4.6: no such route.
async fn answers_404_and_sync_goes_on() {
    let logs = support::logs();
    let lapi = Lapi::start();
    let key = lapi.new_bouncer_key("cerberus-usage");
    let (app, _dir) = start(&lapi.url, &key).await;
    lookups(&app, &["192.0.2.50"]).await;
    let line = format!("LAPI at {} does not accept usage metrics", lapi.url);
    support::wait_for("the 404 from LAPI 1.4.6", 20, || {
        logs.text().contains(&line)
    })
    .await;

    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.77", "--duration", "1h"]);
    support::wait_for("the new decision synced", 20, || {
        !app.decider.answer(ip("192.0.2.77")).allows()
    })
    .await;
    let answer =
        bouncer_api::Client::new(bouncer_api::ClientConfig::new(&app.config.socket).timeout(LIMIT))
            .lookup(ip("192.0.2.77"))
            .await
            .unwrap();
    assert_eq!(answer.remediation, bouncer_api::Remediation::Ban);
    assert_eq!(logs.text().matches(&line).count(), 1);
    assert_eq!(app.stats.pulls_failed.load(Ordering::Relaxed), 0);
    app.stop().await;
}
