//! Helpers shared by the integration tests (each test file includes them with `mod support;`).
#![allow(dead_code)]

pub mod admin;
pub mod appsec;
pub mod caddy;
pub mod capi;
pub mod daemon;
pub mod engine;
pub mod engine_env;
pub mod gate;
pub mod lapi;
pub mod managed_engine;
pub mod mmdb;
pub mod postgres;
pub mod script_lapi;
pub mod seed;
pub mod stand_ins;
pub mod web;

use cerberus::config::{Config, Listen};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A config with every listener off and fast sync, in `data_dir`.
pub fn config(data_dir: &Path, api_url: Option<&str>, api_key: Option<&str>) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        socket: data_dir.join("cerberus.sock"),
        api_url: api_url.map(str::to_string).into_iter().collect(),
        api_key: api_key.map(str::to_string),
        update_frequency: Duration::from_millis(300),
        lapi_timeout: Duration::from_secs(2),
        lapi_retry_max: Duration::from_millis(400),
        forward_auth_listen: Listen::Off,
        admin_listen: Listen::Off,
        ..Config::default()
    }
}

/// Polls `f` every 20 ms until it is true; panics with `what` after `secs` seconds.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test binary (installed once).
pub fn logs() -> LogBuffer {
    static BUF: OnceLock<LogBuffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    })
    .clone()
}

/// Reads an HTTP request up to the end of its head; `None` if the peer closes first.
pub async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// A stand-in LAPI that answers `startup=true` with `body` and every other pull with an
/// empty delta; returns its URL and the request heads it saw.
pub async fn serve_body(body: String) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (body, heads) = (body.clone(), heads.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut sock).await else {
                    return;
                };
                let empty = r#"{"new":null,"deleted":null}"#;
                let answer = if head.lines().next().unwrap_or("").contains("startup=true") {
                    body.as_str()
                } else {
                    empty
                };
                heads.lock().unwrap().push(head);
                let out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// A startup answer with `n` IPv4 ban decisions (10.x.y.z), ids 1..=n.
pub fn startup_body(n: usize) -> String {
    let mut body = String::from(r#"{"deleted":null,"new":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"id":{},"origin":"lists","type":"ban","scope":"Ip","value":"10.{}.{}.{}","duration":"4h","scenario":"bulk"}}"#,
            i + 1,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    body.push_str("]}");
    body
}
