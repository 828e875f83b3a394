//! A managed CrowdSec engine for end-to-end tests: a config directory for Debian's 1.4.6
//! (agent and LAPI in one process, `common.daemonize: true` so it handles SIGTERM and
//! SIGHUP) that reads one Caddy JSON access log, and a loopback hub that serves the hub
//! index of 2023-03-01 (the one whose `crowdsecurity/caddy` the 1.4.6 engine accepts), or,
//! on CrowdSec 1.7.8, today's index (`.index.json` of the same folder).
//!
//! The index is read at test time from `../shared/crowdsec-hub/index-2023-03-01.json`
//! (or `$CERBERUS_HUB_FIXTURES/index-2023-03-01.json`); it is never copied into the
//! project. Every process started on a directory's config is killed when it is dropped.

use super::managed_engine::{Engine, EngineOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The file name of the 2023 hub index in the fixtures folder.
pub const INDEX_2023: &str = "index-2023-03-01.json";

/// The folder holding the real hub indexes.
pub fn hub_fixtures() -> PathBuf {
    std::env::var_os("CERBERUS_HUB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/crowdsec-hub"))
}

/// The hub index of 2023-03-01; panics saying where it was looked for and how to get it.
pub fn index_2023() -> Vec<u8> {
    let path = hub_fixtures().join(INDEX_2023);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the 2023 hub index {} ({e}). This test needs the real \
             crowdsecurity/caddy collection: put the hub's .index.json of commit 511a7e31d \
             (github.com/crowdsecurity/hub, 2023-03-01) there as {INDEX_2023}, or set \
             CERBERUS_HUB_FIXTURES to the folder holding it",
            path.display()
        )
    })
}

/// Serves `index` at `/hub/.index.json` and `files` at `/hub/<path>`; stops on drop.
pub struct HubServer {
    /// `http://127.0.0.1:PORT/hub/.index.json`
    pub url: String,
    index: Arc<Mutex<Vec<u8>>>,
    /// Item files, by path under `/hub/`.
    pub files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HubServer {
    pub async fn start(index: Vec<u8>) -> HubServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hub/.index.json", listener.local_addr().unwrap());
        let index = Arc::new(Mutex::new(index));
        let files = Arc::new(Mutex::new(HashMap::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (i, f, r) = (index.clone(), files.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (i, f, r) = (i.clone(), f.clone(), r.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let path = line.split_whitespace().nth(1).unwrap_or("");
                    let body = match path.strip_prefix("/hub/") {
                        Some(".index.json") => Some(i.lock().unwrap().clone()),
                        Some(p) => f.lock().unwrap().get(p).cloned(),
                        None => None,
                    };
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"not here".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        HubServer {
            url,
            index,
            files,
            requests,
            task,
        }
    }

    /// Serves another index from now on.
    pub fn serve(&self, index: Vec<u8>) {
        *self.index.lock().unwrap() = index;
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An engine that reads a Caddy log, with `index` in its hub dir (hub items can then be
/// installed for it) and its Prometheus metrics on, so that `cscli metrics` can tell what
/// was read and parsed when a test times out.
pub fn caddy_engine(index: Vec<u8>) -> Engine {
    Engine::with(EngineOptions {
        index: Some(index),
        prometheus: true,
        caddy_log: None,
        online_client: false,
    })
}

/// What detects a prober in Caddy's log, and where it comes from: the real 2023 hub when
/// its copy is present, else the project's own small index.
pub struct CaddyPresets {
    pub index: Vec<u8>,
    /// Installed in this order.
    pub install: Vec<&'static str>,
    pub collection: &'static str,
    pub scenario: &'static str,
    /// The real hub's items (not ours).
    pub real: bool,
}

pub fn caddy_presets() -> CaddyPresets {
    // CrowdSec 1.7.8 runs today's crowdsecurity/caddy (which 1.4.6 refuses).
    let today = hub_fixtures().join(".index.json");
    if super::lapi::version().is_modern() && today.exists() {
        return CaddyPresets {
            index: std::fs::read(&today).unwrap(),
            install: vec!["crowdsecurity/syslog-logs", "crowdsecurity/caddy"],
            collection: "crowdsecurity/caddy",
            scenario: "crowdsecurity/http-probing",
            real: true,
        };
    }
    if hub_fixtures().join(INDEX_2023).exists() {
        // `crowdsecurity/caddy` alone parses nothing: its parser wants
        // `evt.Parsed.program`, which the raw-stage `non-syslog` node of
        // `crowdsecurity/syslog-logs` sets from the acquisition label (CrowdSec's own
        // install brings it with `crowdsecurity/linux`).
        return CaddyPresets {
            index: index_2023(),
            install: vec!["crowdsecurity/syslog-logs", "crowdsecurity/caddy"],
            collection: "crowdsecurity/caddy",
            scenario: "crowdsecurity/http-probing",
            real: true,
        };
    }
    eprintln!(
        "hub fixtures not found in {} (set CERBERUS_HUB_FIXTURES): using the project's own \
         Caddy parser and probing scenario",
        hub_fixtures().display()
    );
    CaddyPresets {
        index: own_caddy_index(),
        install: vec!["cerberus/caddy-probing"],
        collection: "cerberus/caddy-probing",
        scenario: "cerberus/http-probing",
        real: false,
    }
}

/// A parser of Caddy's JSON access log (1.4.6 expression helpers only).
const OWN_PARSER: &str = r#"onsuccess: next_stage
filter: "evt.Line.Labels.type == 'caddy'"
name: cerberus/caddy-json-logs
description: "Caddy's JSON access log (cerberus test parser)"
statics:
  - meta: log_type
    value: http_access-log
  - meta: service
    value: http
  - meta: source_ip
    expression: "JsonExtract(evt.Line.Raw, 'request.remote_ip')"
  - meta: http_status
    expression: "JsonExtract(evt.Line.Raw, 'status')"
  - meta: http_path
    expression: "JsonExtract(evt.Line.Raw, 'request.uri')"
"#;

/// More than 10 distinct missing paths from one address within seconds.
const OWN_SCENARIO: &str = r#"type: leaky
name: cerberus/http-probing
description: "A client asking for many missing paths (cerberus test scenario)"
filter: "evt.Meta.log_type == 'http_access-log' && evt.Meta.http_status == '404'"
groupby: "evt.Meta.source_ip"
distinct: "evt.Meta.http_path"
capacity: 10
leakspeed: "10s"
blackhole: 1m
labels:
  service: http
  type: scan
  remediation: true
"#;

/// Our own hub index (the `.index.json` format): `cerberus/caddy-probing`, a collection
/// of the parser and the scenario above.
pub fn own_caddy_index() -> Vec<u8> {
    use base64::Engine as _;
    use serde_json::json;
    let item = |path: &str, body: &str, description: &str| {
        let hex = cerberus::engine::hub::sha256_hex(body.as_bytes());
        let mut v = json!({
            "path": path, "version": "0.1",
            "versions": {"0.1": {"digest": hex, "deprecated": false}},
            "description": description, "author": "cerberus", "labels": null,
            "content": base64::engine::general_purpose::STANDARD.encode(body),
        });
        if let Some(stage) = path
            .strip_prefix("parsers/")
            .and_then(|p| p.split('/').next())
        {
            v["stage"] = json!(stage);
        }
        v
    };
    let collection =
        "parsers:\n  - cerberus/caddy-json-logs\nscenarios:\n  - cerberus/http-probing\n";
    let mut coll = item(
        "collections/cerberus/caddy-probing.yaml",
        collection,
        "Caddy: parser and probing detection",
    );
    coll["parsers"] = json!(["cerberus/caddy-json-logs"]);
    coll["scenarios"] = json!(["cerberus/http-probing"]);
    let index = json!({
        "parsers": {"cerberus/caddy-json-logs": item("parsers/s01-parse/cerberus/caddy-json-logs.yaml", OWN_PARSER, "Caddy JSON access logs")},
        "scenarios": {"cerberus/http-probing": item("scenarios/cerberus/http-probing.yaml", OWN_SCENARIO, "Probing for missing paths")},
        "postoverflows": {},
        "collections": {"cerberus/caddy-probing": coll},
    });
    serde_json::to_vec_pretty(&index).unwrap()
}
