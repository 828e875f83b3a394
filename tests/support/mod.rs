//! Helpers shared by the integration tests (each test file includes them with `mod support;`).
#![allow(dead_code)]

pub mod lapi;

use cerberus::config::Config;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A config with every listener off and fast sync, in `data_dir`.
pub fn config(data_dir: &Path, api_url: Option<&str>, api_key: Option<&str>) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        socket: data_dir.join("cerberus.sock"),
        api_url: api_url.map(str::to_string),
        api_key: api_key.map(str::to_string),
        update_frequency: Duration::from_millis(300),
        lapi_timeout: Duration::from_secs(2),
        lapi_retry_max: Duration::from_millis(400),
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
