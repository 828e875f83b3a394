//! Load on the daemon's Unix socket: 1, 16 and 64 connections, each with one lookup in
//! flight (one request per connection at a time), and 4 connections with 16 lookups
//! written at once each (what a module multiplexing its callers over a few connections
//! does), for a few seconds each; prints lookups/s, p50 and p99 as a Markdown table.
//!
//! ```text
//! cargo bench --bench socket_load                        # daemon started in-process
//! cargo bench --bench socket_load -- --socket /path/cerberus.sock --seconds 5
//! cargo bench --bench socket_load -- --connections 8,32 --depth 4
//! cargo bench --bench socket_load -- --decisions 1000 --seconds 0.2 --connections 2
//! ```
//!
//! Without `--socket`, a standalone cerberus is started in this process (its socket
//! served on its own thread, as in production) holding `--decisions` single-IP bans
//! (default 100k; `CERBERUS_BENCH_SIZE` also sets it) and 1k ranges; half the lookups
//! hit. The load generator runs on one current-thread runtime.

use bouncer_api::{decode_response, encode_request, Request, Response};
use bytes::BytesMut;
use cerberus::config::{Config, Listen};
use cerberus::decision::{Decision, Target};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[allow(dead_code)]
mod common;

/// How many single-IP bans the in-process daemon holds (`--decisions`).
static BANNED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn banned_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + (i % BANNED.get().copied().unwrap_or(1)) * 3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let decisions = match arg("--decisions") {
        Some(d) => d.parse().expect("--decisions takes a number"),
        None => common::size_env(100_000) as u32,
    };
    BANNED.set(decisions.max(1)).unwrap();
    // Rows as connections x lookups in flight per connection (written in one batch).
    let rows: Vec<(usize, usize)> = match arg("--connections") {
        Some(list) => {
            let depth = arg("--depth").and_then(|d| d.parse().ok()).unwrap_or(1);
            list.split(',')
                .filter_map(|n| n.parse().ok())
                .map(|n| (n, depth))
                .collect()
        }
        None => vec![(1, 1), (16, 1), (64, 1), (4, 16)],
    };

    // The daemon (in-process unless --socket), on a runtime of its own.
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, app) = match arg("--socket") {
        Some(s) => (PathBuf::from(s), None),
        None => {
            let app = daemon_rt.block_on(start_daemon(dir.path()));
            (app.config.socket.clone(), Some(app))
        }
    };

    let load_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("socket {}, {seconds} s per row", socket.display());
    println!();
    println!("| connections | in flight each | lookups/s | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (n, depth) in rows {
        let dur = Duration::from_secs_f64(seconds);
        let (rate, p50, p99) = load_rt.block_on(run(&socket, n, depth, dur));
        println!(
            "| {n} | {depth} | {:.0}k | {:.0} us | {:.0} us |",
            rate / 1000.0,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    if let Some(app) = app {
        daemon_rt.block_on(app.stop());
    }
}

async fn start_daemon(dir: &std::path::Path) -> cerberus::app::Running {
    let config = Config {
        data_dir: dir.to_path_buf(),
        socket: dir.join("cerberus.sock"),
        forward_auth_listen: Listen::Off,
        admin_listen: Listen::Off,
        ..Config::default()
    };
    let app = cerberus::app::start(config).await.expect("start cerberus");
    let expires = cerberus::clock::now_secs_precise() + 86_400;
    let mut w = Vec::new();
    for i in 0..*BANNED.get().unwrap() {
        w.push(Decision {
            id: i as i64 + 1,
            target: Target::from_ip(IpAddr::V4(banned_ip(i))),
            type_name: "ban".into(),
            origin: "crowdsec".into(),
            scenario: "crowdsecurity/http-probing".into(),
            expires_at: expires,
        });
    }
    for i in 0..1000u32 {
        w.push(Decision {
            id: 1_000_000 + i as i64,
            target: Target::parse(&format!("172.{}.{}.0/24", 16 + i / 256, i % 256)).unwrap(),
            type_name: "ban".into(),
            origin: "lists".into(),
            scenario: "firehol".into(),
            expires_at: expires,
        });
    }
    app.control.insert(w).await.unwrap();
    app
}

/// `n` connections, each writing `depth` lookups at once and waiting for their answers,
/// for `dur`; returns (lookups/s, p50, p99). A lookup's latency is its batch's.
async fn run(
    socket: &std::path::Path,
    n: usize,
    depth: usize,
    dur: Duration,
) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for c in 0..n {
        let mut s = UnixStream::connect(socket)
            .await
            .expect("connect to the socket");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut out = BytesMut::with_capacity(64);
            let mut input = BytesMut::with_capacity(4096);
            let mut i = c as u32 * 7919;
            while Instant::now() < deadline {
                out.clear();
                for _ in 0..depth {
                    i = i.wrapping_add(1);
                    // Half hits (a banned /32), half misses.
                    let addr = if i % 2 == 0 {
                        IpAddr::V4(banned_ip(i / 2))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(0xc000_0000 | i))
                    };
                    encode_request(&Request::Lookup { id: i, addr }, &mut out);
                }
                let t = Instant::now();
                s.write_all(&out).await.unwrap();
                let mut answered = 0;
                while answered < depth {
                    if let Some(r) = decode_response(&mut input).unwrap() {
                        assert!(matches!(r, Response::Lookup { .. }), "{r:?}");
                        answered += 1;
                        continue;
                    }
                    input.reserve(4096);
                    assert!(s.read_buf(&mut input).await.unwrap() > 0, "daemon closed");
                }
                let took = t.elapsed();
                lat.extend(std::iter::repeat(took).take(depth));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, pct(0.50), pct(0.99))
}
