//! The HTTP doors' caps and timeouts, on forward_auth (the admin API runs the same loop):
//! over `forward_auth_max_connections` a connection is closed at once and counted; a
//! request head trickled byte by byte (slowloris) is closed after `http_header_timeout`;
//! a client that pipelines requests and never reads is closed after
//! `http_write_timeout`.

mod support;

use cerberus::app::Running;
use cerberus::config::{Config, Listen};
use cerberus::decision::{Decision, Target};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn daemon(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> (Running, String) {
    let mut config = support::config(dir, None, None);
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    tweak(&mut config);
    let app = tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .unwrap()
        .unwrap();
    app.control
        .insert(vec![Decision {
            id: 1,
            target: Target::parse("192.0.2.1").unwrap(),
            type_name: "ban".into(),
            origin: "cscli".into(),
            scenario: "test".into(),
            expires_at: cerberus::clock::now_secs_precise() + 3600,
        }])
        .await
        .unwrap();
    let addr = app.forward_auth_addr.clone().unwrap();
    (app, addr)
}

/// The value of `name{door="forward_auth",reason="REASON"}` in this process's metrics.
fn counter(name: &str, reason: &str) -> f64 {
    let text = cerberus::metrics::render().expect("the recorder is installed by start");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            l.contains("door=\"forward_auth\"") && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads until the server closes (EOF or reset); false when it is still open after
/// [`LIMIT`].
async fn closed_by_server(s: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(LIMIT, async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n";

/// One request on a fresh connection; the status line.
async fn status_line(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(GET).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_connection_is_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (app, addr) = daemon(dir.path(), |c| c.forward_auth_max_connections = 2).await;
    let before = counter("cerberus_http_connections_shed_total", "cap");
    let held = [
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    let mut third = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_by_server(&mut third).await, "the third is shed");
    assert!(counter("cerberus_http_connections_shed_total", "cap") >= before + 1.0);
    drop(held);
    // With the held ones gone, a request is served again.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Some(line) = status_line(&addr).await {
            assert_eq!(line, "HTTP/1.1 403 Forbidden");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (app, addr) = daemon(dir.path(), |c| {
        c.http_header_timeout = Duration::from_millis(300);
    })
    .await;
    let before = counter(
        "cerberus_http_connections_timed_out_total",
        "header_timeout",
    );
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // One header line every 50 ms: always some progress, never a whole head.
    let trickle = tokio::spawn(async move {
        if wr
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    assert!(closed_by_server(&mut rd).await, "a slow head is closed");
    trickle.abort();
    assert!(
        counter(
            "cerberus_http_connections_timed_out_total",
            "header_timeout"
        ) >= before + 1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_and_never_reads_is_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (app, addr) = daemon(dir.path(), |c| {
        c.http_write_timeout = Duration::from_millis(300);
        c.http_header_timeout = Duration::from_secs(60);
    })
    .await;
    let before = counter("cerberus_http_connections_timed_out_total", "write_timeout");
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // 8000 requests whose ban pages (about 1 KiB each) fill both socket buffers.
    let requests = GET.repeat(8000);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&requests).await;
        wr
    });
    // Read nothing until the watchdog had its chance.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        closed_by_server(&mut rd).await,
        "a peer that never reads is dropped"
    );
    writer.abort();
    assert!(counter("cerberus_http_connections_timed_out_total", "write_timeout") >= before + 1.0);
    app.stop().await;
}
