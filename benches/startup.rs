//! The startup pull of a large decision set through the whole daemon, measured end to end:
//! a generated LAPI answer (default 1,000,000 decisions: 990k IPv4, 10k ranges; about
//! 180 MB of JSON) served on loopback, `cerberus::app::start` with a fresh data_dir, time to
//! the first published snapshot, peak and steady RSS, then a restart with LAPI gone (load
//! from SQLite). Run: `cargo bench --bench startup` (or `-- 100000` for another size).
//!
//! It prints a Markdown table for benches/README.md.

#[allow(dead_code)]
mod common;

use cerberus::decision::Remediation;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    field(&status, "VmRSS:")
}

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    field(&status, "VmHWM:")
}

fn field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes the startup answer to a file, decision by decision (never whole in memory).
fn generate(path: &std::path::Path, total: usize) -> (u64, Vec<String>) {
    let ranges = (total / 100).min(10_000);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut samples = Vec::new();
    write!(out, "{{\"new\":[").unwrap();
    for i in 0..total {
        if i > 0 {
            write!(out, ",").unwrap();
        }
        let r = next();
        let (scope, value) = if i < ranges {
            let p = 16 + (r % 13) as u32;
            let a = (r >> 16) as u32 & (u32::MAX << (32 - p));
            ("Range", format!("{}/{p}", std::net::Ipv4Addr::from(a)))
        } else {
            ("Ip", std::net::Ipv4Addr::from((r >> 16) as u32).to_string())
        };
        if i % (total / 8).max(1) == 0 && scope == "Ip" {
            samples.push(value.clone());
        }
        write!(
            out,
            r#"{{"duration":"167h59m{}.{}s","id":{},"origin":"lists","scenario":"firehol_cybercrime_tracker","scope":"{scope}","type":"ban","value":"{value}","uuid":"0b7e55d4-8d52-4e5c-a8a2-{:012x}"}}"#,
            i % 60,
            r % 1_000_000_000,
            i + 1,
            i
        )
        .unwrap();
    }
    write!(out, "],\"deleted\":null}}").unwrap();
    out.flush().unwrap();
    (std::fs::metadata(path).unwrap().len(), samples)
}

/// A one-route LAPI: answers every request with the file (startup) or an empty delta.
async fn serve(path: std::path::PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let path = path.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                if head.contains("startup=true") {
                    let len = tokio::fs::metadata(&path).await.unwrap().len();
                    let hdr = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
                    sock.write_all(hdr.as_bytes()).await.unwrap();
                    let mut f = tokio::fs::File::open(&path).await.unwrap();
                    tokio::io::copy(&mut f, &mut sock).await.unwrap();
                } else {
                    let body = r#"{"new":null,"deleted":null}"#;
                    let hdr = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(hdr.as_bytes()).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn main() {
    let total = common::size_arg(1_000_000);
    let work = tempfile::tempdir().unwrap();
    let body = work.path().join("startup.json");
    let t = Instant::now();
    let (bytes, samples) = generate(&body, total);
    eprintln!(
        "generated {total} decisions, {} MB, in {:?}",
        bytes / 1_000_000,
        t.elapsed()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = serve(body.clone()).await;
        let data = work.path().join("data");
        // The socket and listeners in the bench's own directory and ports, not the
        // defaults (./cerberus-data/cerberus.sock, 127.0.0.1:7420 and :8088).
        let config = cerberus::config::Config {
            api_url: vec![url],
            api_key: Some("bench".into()),
            update_frequency: Duration::from_secs(3600),
            ..common::standalone_config(&data)
        };
        let base_rss = rss_kib();
        let started = Instant::now();
        let app = cerberus::app::start(config.clone()).await.unwrap();
        while !app.stats.first_sync_done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let to_publish = started.elapsed();
        let pull_ms = app.stats.last_duration_ms.load(Ordering::Relaxed);
        let snap = app.decider.snapshot();
        for s in &samples {
            assert_eq!(app.decider.answer(s.parse().unwrap()).remediation, Some(Remediation::Ban), "{s}");
        }
        let peak_at_publish = peak_kib();
        let t = Instant::now();
        app.persist.flush();
        let persisted = t.elapsed();
        let decisions = snap.len();
        let table_mb = snap.table_bytes() as f64 / 1e6;
        drop(snap);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let steady = rss_kib();
        let peak = peak_kib();
        app.stop().await;

        // Restart with LAPI gone: everything comes back from SQLite.
        let mut offline = config.clone();
        offline.api_url = vec!["http://127.0.0.1:9".into()];
        let t = Instant::now();
        let app = cerberus::app::start(offline).await.unwrap();
        let reload = t.elapsed();
        for s in &samples {
            assert_eq!(app.decider.answer(s.parse().unwrap()).remediation, Some(Remediation::Ban), "{s}");
        }
        app.stop().await;

        let mb = |kib: u64| kib as f64 / 1024.0;
        println!("| decisions | body | pull to published snapshot | start to published | peak RSS | steady RSS | peak / steady | single-IP tables | SQLite write (after publish) | restart from SQLite, LAPI down |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {decisions} | {} MB | {:.2} s | {:.2} s | {:.0} MiB | {:.0} MiB | {:.2} | {:.0} MB | {:.1} s | {:.2} s |",
            bytes / 1_000_000,
            pull_ms as f64 / 1000.0,
            to_publish.as_secs_f64(),
            mb(peak),
            mb(steady),
            mb(peak) / mb(steady),
            table_mb,
            persisted.as_secs_f64(),
            reload.as_secs_f64(),
        );
        eprintln!(
            "rss before start {:.0} MiB, peak at publish {:.0} MiB",
            mb(base_rss),
            mb(peak_at_publish)
        );
    });
}
