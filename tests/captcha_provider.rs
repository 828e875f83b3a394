//! The captcha provider as cerberus sees it: the bounds on siteverify calls (per client
//! IP, a timeout), and whether the provider answers, as `/status`, the connectivity
//! diagnostics and `cerberus diagnose` show it.
//!
//! The stand-in is `support::stand_ins::provider`; here it holds its answers back, to show the
//! calls in flight.

mod support;

use cerberus::captcha::verify::{Outcome, Reach, Verifier, PER_IP, TIMEOUT};
use cerberus::config::{CaptchaProvider, Config};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::admin::{with_admin, AdminClient};
use support::stand_ins::provider;

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
