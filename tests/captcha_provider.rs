//! The captcha provider as cerberus sees it: the bounds on siteverify calls (per client
//! IP, a timeout), and whether the provider answers, as `/status`, the connectivity
//! diagnostics and `cerberus diagnose` show it.
//!
//! The stand-in answers as the providers' siteverify does (a form POST of `secret`,
//! `response`, `remoteip`; JSON `{"success": bool, "error-codes": [..]}`, the shapes
//! documented by Cloudflare, hCaptcha and Google and sent by crowdsecurity/lua-cs-bouncer
//! `lib/plugins/crowdsec/captcha.lua` `M.Validate`). It can hold its answers back, to
//! show the calls in flight.

mod support;

use cerberus::captcha::verify::{Outcome, Reach, Verifier, PER_IP, TIMEOUT};
use cerberus::config::{CaptchaProvider, Config};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A loopback siteverify. `release` false holds every answer until it turns true;
/// `received` counts the requests read.
struct Provider {
    url: String,
    received: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

async fn provider(hold: bool) -> Provider {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/siteverify", l.local_addr().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let (release, rx) = watch::channel(!hold);
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let count = count.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let body = read_request(&mut s).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _ = rx.wait_for(|go| *go).await;
                let ok = body.contains("response=good");
                let answer = format!("{{\"success\": {ok}, \"error-codes\": []}}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Provider {
        url,
        received,
        release,
    }
}

/// Reads one HTTP request; returns its body.
async fn read_request(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return String::new();
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return body.to_string();
            }
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solves_in_flight_are_bounded_per_client_ip() {
    let p = provider(true).await;
    let v = Arc::new(Verifier::new(p.url.clone(), "s3cret".into()).unwrap());
    let a = ip("192.0.2.10");
    let mut held = Vec::new();
    for _ in 0..PER_IP {
        let v = v.clone();
        held.push(tokio::spawn(async move { v.verify("good", a).await }));
    }
    support::wait_for("the held solves at the provider", 20, || {
        p.received.load(Ordering::SeqCst) == PER_IP as usize
    })
    .await;
    // One more from the same IP is refused at once, without reaching the provider.
    let third = tokio::time::timeout(Duration::from_secs(2), v.verify("good", a)).await;
    assert_eq!(third.ok(), Some(Outcome::Busy), "refused at once, not held");
    assert_eq!(p.received.load(Ordering::SeqCst), PER_IP as usize);
    // Another IP is not held back by the first one's bound.
    let other = {
        let v = v.clone();
        tokio::spawn(async move { v.verify("bad", ip("198.51.100.7")).await })
    };
    support::wait_for("the other IP's solve at the provider", 20, || {
        p.received.load(Ordering::SeqCst) == PER_IP as usize + 1
    })
    .await;
    p.release.send(true).unwrap();
    for h in held {
        assert_eq!(h.await.unwrap(), Outcome::Solved);
    }
    assert_eq!(other.await.unwrap(), Outcome::Rejected);
    // The slots are given back: the first IP may solve again.
    assert_eq!(v.verify("good", a).await, Outcome::Solved);
    assert_eq!(v.reach(), Reach::Reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_ends_at_the_timeout_as_unreachable() {
    let p = provider(true).await;
    let v = Verifier::new(p.url.clone(), "s3cret".into()).unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(TIMEOUT * 4, v.verify("good", ip("192.0.2.11")))
        .await
        .expect("the verifier's own timeout ends the call");
    assert_eq!(outcome, Outcome::Unreachable);
    assert!(started.elapsed() >= TIMEOUT, "it waited for the provider");
    assert_eq!(v.reach(), Reach::Unreachable);
    assert_eq!(p.received.load(Ordering::SeqCst), 1);
}

fn captcha_config(dir: &std::path::Path, verify_url: &str) -> Config {
    let mut c = with_admin(support::config(dir, None, None));
    c.captcha.provider = Some(CaptchaProvider::Turnstile);
    c.captcha.site_key = "site".into();
    c.captcha.secret_key = "s3cret".into();
    c.captcha.verify_url = Some(verify_url.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_diagnostics_tell_whether_the_provider_answers() {
    let p = provider(false).await;
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(captcha_config(dir.path(), &p.url))
        .await
        .unwrap();
    let admin = AdminClient::new(&app);
    let (_, s) = admin.get("/status").await;
    assert_eq!(s["captcha"]["provider"], "turnstile", "{s}");
    assert_eq!(s["captcha"]["provider_status"], "unknown", "{s}");
    let (_, conn) = admin.get("/diagnostics/connectivity").await;
    assert_eq!(conn["captcha"]["status"], "reachable", "{conn}");
    assert_eq!(conn["captcha"]["url"], p.url.as_str(), "{conn}");
    assert!(conn["captcha"]["latency_ms"].is_u64(), "{conn}");
    let (_, s) = admin.get("/status").await;
    assert_eq!(s["captcha"]["provider_status"], "reachable", "{s}");
    app.stop().await;

    // Nothing listens on port 9 of loopback: unreachable, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let dead = "http://127.0.0.1:9/siteverify";
    let app = cerberus::app::start(captcha_config(dir.path(), dead))
        .await
        .unwrap();
    let admin = AdminClient::new(&app);
    let (_, conn) = admin.get("/diagnostics/connectivity").await;
    assert_eq!(conn["captcha"]["status"], "unreachable", "{conn}");
    assert!(
        !conn["captcha"]["error"].as_str().unwrap().is_empty(),
        "{conn}"
    );
    let (_, s) = admin.get("/status").await;
    assert_eq!(s["captcha"]["provider_status"], "unreachable", "{s}");

    // `cerberus diagnose` against this daemon: the captcha check fails, naming the URL
    // and what to do.
    let addr = admin.base.trim_start_matches("http://").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cerberus"))
        .args([
            "--admin",
            &addr,
            "--token",
            &admin.token,
            "diagnose",
            "--json",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose --json ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "captcha")
        .unwrap_or_else(|| panic!("no captcha check: {report}"))
        .clone();
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["detail"].as_str().unwrap().contains(dead), "{check}");
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("captcha_verify_url"),
        "{check}"
    );
    assert!(!out.status.success(), "{report}");
    app.stop().await;
}
