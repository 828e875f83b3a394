//! A managed CrowdSec engine for end-to-end tests: a config directory for Debian's 1.4.6
//! (agent and LAPI in one process, `common.daemonize: true` so it handles SIGTERM and
//! SIGHUP) that reads one Caddy JSON access log, and a loopback hub that serves the hub
//! index of 2023-03-01 (the one whose `crowdsecurity/caddy` the 1.4.6 engine accepts).
//!
//! The index is read at test time from `../shared/crowdsec-hub/index-2023-03-01.json`
//! (or `$CERBERUS_HUB_FIXTURES/index-2023-03-01.json`); it is never copied into the
//! project. Every process started on a directory's config is killed when it is dropped.

use super::managed_engine::{Engine, EngineOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Serves one index at `/hub/.index.json` on loopback (404 for anything else); stops on
/// drop. Every item of the real indexes carries its `content`, so nothing else is needed.
pub struct IndexServer {
    /// `http://127.0.0.1:PORT/hub/.index.json`
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl IndexServer {
    pub async fn start(index: Vec<u8>) -> IndexServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hub/.index.json", listener.local_addr().unwrap());
        let index = Arc::new(index);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let index = index.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        if head.len() > 64 * 1024 {
                            return;
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("");
                    let (status, body): (&str, &[u8]) = if path == "/hub/.index.json" {
                        ("200 OK", &index)
                    } else {
                        ("404 Not Found", b"not here")
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                });
            }
        });
        IndexServer { url, task }
    }
}

impl Drop for IndexServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An engine that reads a Caddy log, with the 2023 index in its hub dir (hub items can
/// then be installed for it) and its Prometheus metrics on, so that `cscli metrics` can
/// tell what was read and parsed when a test times out.
pub fn caddy_engine() -> Engine {
    Engine::with(EngineOptions {
        index: Some(index_2023()),
        prometheus: true,
        caddy_log: None,
    })
}
