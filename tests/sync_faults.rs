//! Fault injection with a mock LAPI: 500, 403, invalid JSON, answers without `new` (`{}`,
//! a 200 error object), a truncated body, oversized bodies (declared and streamed), and
//! a hang. Each time the known decisions stay enforced,
//! the error is logged and counted, and sync recovers (with a full resync) when LAPI does.

mod support;

use cerberus::decision::Remediation;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
enum Behaviour {
    /// 200 with the startup body for `startup=true`, an empty delta otherwise.
    Serve,
    Status(u16, &'static str),
    Body(&'static str),
    /// Declares more bytes than it sends, then closes.
    Truncated,
    /// Declares a Content-Length over the limit.
    DeclaredHuge,
    /// Streams (chunked, no length) more bytes than the limit.
    StreamedHuge,
    /// Reads the request and never answers.
    Hang,
}

struct Mock {
    behaviour: Behaviour,
    startup_body: String,
    requests: Vec<String>,
}

fn decision(id: i64, value: &str, scope: &str) -> String {
    format!(
        r#"{{"id":{id},"origin":"cscli","type":"ban","scope":"{scope}","value":"{value}","duration":"3h59m55.5s","scenario":"test"}}"#
    )
}

async fn start_mock(state: Arc<Mutex<Mock>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).into_owned();
                let line = head.lines().next().unwrap_or_default().to_string();
                let agent_ok = head.to_ascii_lowercase().contains(&format!(
                    "user-agent: cerberus/{}",
                    env!("CARGO_PKG_VERSION")
                ));
                let (behaviour, startup_body) = {
                    let mut s = state.lock().unwrap();
                    s.requests.push(if agent_ok {
                        line.clone()
                    } else {
                        format!("NO USER AGENT: {line}")
                    });
                    (s.behaviour.clone(), s.startup_body.clone())
                };
                let respond = |status: u16, body: &str| {
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let out = match behaviour {
                    Behaviour::Serve if line.contains("startup=true") => respond(200, &startup_body),
                    Behaviour::Serve => respond(200, r#"{"new":null,"deleted":null}"#),
                    Behaviour::Status(code, body) => respond(code, body),
                    Behaviour::Body(body) => respond(200, body),
                    Behaviour::Truncated => {
                        let body = &startup_body[..startup_body.len() / 2];
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            startup_body.len()
                        )
                    }
                    Behaviour::DeclaredHuge => {
                        "HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n{\"new\":[".to_string()
                    }
                    Behaviour::StreamedHuge => {
                        let mut out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string();
                        let mut body = String::from(r#"{"new":["#);
                        for i in 0..2000 {
                            if i > 0 {
                                body.push(',');
                            }
                            body.push_str(&decision(100_000 + i, "203.0.113.9", "Ip"));
                        }
                        body.push_str("]}");
                        out.push_str(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
                        out
                    }
                    Behaviour::Hang => {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                };
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_remove_known_decisions_and_sync_recovers() {
    let logs = support::logs();
    let body = |extra: &str| {
        format!(
            r#"{{"new":[{},{},{}{extra}],"deleted":null}}"#,
            decision(1, "192.0.2.1", "Ip"),
            decision(2, "2001:db8::1", "Ip"),
            decision(3, "198.51.100.0/24", "Range"),
        )
    };
    let state = Arc::new(Mutex::new(Mock {
        behaviour: Behaviour::Serve,
        startup_body: body(""),
        requests: Vec::new(),
    }));
    let url = start_mock(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&url), Some("test-key"));
    config.lapi_max_body = 64 * 1024;
    config.lapi_timeout = std::time::Duration::from_secs(1);
    let app = cerberus::app::start(config).await.unwrap();
    let d = app.decider.clone();
    let banned = |ip: &str| d.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban);
    support::wait_for("first sync", 10, || banned("192.0.2.1")).await;
    assert!(banned("2001:db8::1") && banned("198.51.100.77"));
    assert!(!banned("192.0.2.2"));
    // The line is written right after the publish that the lookups above saw.
    support::wait_for("the first-sync log line", 5, || {
        logs.text()
            .contains("[CROWDSEC_STARTUP] first sync done: 3 decisions active")
    })
    .await;
    let text = logs.text();
    assert!(
        text.contains("[CROWDSEC_STARTUP] starting decision sync with LAPI at"),
        "{text}"
    );
    assert!(!state
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|r| r.starts_with("NO USER AGENT")));

    let faults = [
        (
            Behaviour::Status(500, "internal error"),
            "status_5xx",
            "HTTP 500",
        ),
        (
            Behaviour::Status(403, r#"{"message":"access forbidden"}"#),
            "forbidden",
            "403",
        ),
        (
            Behaviour::Body("{not json"),
            "invalid_json",
            "not valid decision JSON",
        ),
        (
            Behaviour::Body("<html>bad gateway</html>"),
            "invalid_json",
            "not valid decision JSON",
        ),
        // A proxy's empty object, a 200 error object: no `new` list, no answer.
        (Behaviour::Body("{}"), "invalid_json", "no `new` list"),
        (
            Behaviour::Body(r#"{"message":"x"}"#),
            "invalid_json",
            r#"no `new` list (LAPI said "x")"#,
        ),
        (Behaviour::Truncated, "truncated", "cut short"),
        (Behaviour::DeclaredHuge, "too_large", "lapi_max_body"),
        (Behaviour::StreamedHuge, "too_large", "lapi_max_body"),
        (Behaviour::Hang, "timeout", "did not answer"),
    ];
    for (behaviour, reason, message) in faults {
        let before = app.stats.failures().get(reason).copied().unwrap_or(0);
        state.lock().unwrap().behaviour = behaviour;
        support::wait_for(&format!("a {reason} failure"), 15, || {
            app.stats.failures().get(reason).copied().unwrap_or(0) > before
        })
        .await;
        // Nothing known was lost, nothing from the bad answer got in.
        assert!(
            banned("192.0.2.1") && banned("2001:db8::1") && banned("198.51.100.77"),
            "{reason}"
        );
        assert!(
            !banned("203.0.113.9"),
            "{reason}: a dropped answer leaked in"
        );
        // Two faults of one reason in a row (`{}`, then a 200 error object) share a
        // counter: a pull answered before the switch can move it, so wait for this
        // fault's own log line rather than read the log once.
        support::wait_for(&format!("{reason}: the log line {message:?}"), 15, || {
            logs.text().contains(message)
        })
        .await;
        // Recovery: LAPI is fine again, with one more decision; it arrives by a full resync.
        let ok_before = app.stats.pulls_ok.load(Ordering::Relaxed);
        {
            let mut s = state.lock().unwrap();
            s.behaviour = Behaviour::Serve;
            s.requests.clear();
        }
        support::wait_for(&format!("recovery after {reason}"), 15, || {
            app.stats.pulls_ok.load(Ordering::Relaxed) > ok_before
        })
        .await;
        let first = state
            .lock()
            .unwrap()
            .requests
            .first()
            .cloned()
            .unwrap_or_default();
        assert!(
            first.contains("startup=true"),
            "{reason}: recovery pull was {first}"
        );
        assert!(banned("192.0.2.1"));
    }
    assert!(app.stats.pulls_failed.load(Ordering::Relaxed) >= 10);
    assert!(app.stats.last_error().is_some());

    // A resync carries a new decision and drops two LAPI no longer has.
    state.lock().unwrap().startup_body = format!(
        r#"{{"new":[{},{}],"deleted":[]}}"#,
        decision(1, "192.0.2.1", "Ip"),
        decision(4, "203.0.113.50", "Ip")
    );
    state.lock().unwrap().behaviour = Behaviour::Status(502, "bad gateway");
    let failed = app.stats.pulls_failed.load(Ordering::Relaxed);
    support::wait_for("a 502", 10, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) > failed
    })
    .await;
    state.lock().unwrap().behaviour = Behaviour::Serve;
    support::wait_for("resync", 10, || banned("203.0.113.50")).await;
    // What it left out goes once a second full pull leaves it out too.
    support::wait_for("the confirmed drop", 10, || {
        !banned("2001:db8::1") && !banned("198.51.100.77")
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_decisions_are_skipped_counted_and_logged_once() {
    let logs = support::logs();
    let startup = format!(
        r#"{{"new":[{},{},{},{},{}],"deleted":null}}"#,
        decision(1, "192.0.2.1", "Ip"),
        decision(2, "not-an-ip", "Ip"),
        decision(3, "FR", "Country"),
        decision(4, "10.0.0.0/99", "Range"),
        r#"{"id":5,"type":"ban","scope":"Ip","value":"192.0.2.5","duration":"soon"}"#,
    );
    let state = Arc::new(Mutex::new(Mock {
        behaviour: Behaviour::Serve,
        startup_body: startup,
        requests: Vec::new(),
    }));
    let url = start_mock(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(support::config(dir.path(), Some(&url), Some("k")))
        .await
        .unwrap();
    let d = app.decider.clone();
    support::wait_for("first sync", 10, || {
        !d.answer("192.0.2.1".parse().unwrap()).allows()
    })
    .await;
    assert!(d.answer("192.0.2.5".parse().unwrap()).allows());
    assert_eq!(app.stats.rejected.load(Ordering::Relaxed), 4);
    let text = logs.text();
    for value in ["not-an-ip", "FR", "10.0.0.0/99", "192.0.2.5"] {
        assert_eq!(
            text.matches(&format!("skipping decision with value \"{value}\""))
                .count(),
            1,
            "{value} should be logged exactly once"
        );
    }
    // The user agent and the filters reach LAPI.
    let first = state.lock().unwrap().requests[0].clone();
    assert!(
        first.contains("scopes=ip%2Crange") && first.contains("startup=true"),
        "{first}"
    );
    app.stop().await;
}

/// `on_lapi_unreachable`: after `stale_after` without a good pull, `closed` bans everyone
/// and `open` lets everyone in; the next good pull restores normal enforcement. The
/// operator's filters reach LAPI as query parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_policies_apply_after_stale_after_and_lift_on_recovery() {
    use cerberus::store::{Source, UnreachablePolicy};
    for policy in [UnreachablePolicy::Closed, UnreachablePolicy::Open] {
        let state = Arc::new(Mutex::new(Mock {
            behaviour: Behaviour::Serve,
            startup_body: format!(
                r#"{{"new":[{}],"deleted":null}}"#,
                decision(1, "192.0.2.1", "Ip")
            ),
            requests: Vec::new(),
        }));
        let url = start_mock(state.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = support::config(dir.path(), Some(&url), Some("k"));
        config.on_lapi_unreachable = policy;
        config.stale_after = std::time::Duration::from_secs(1);
        config.origins = vec!["cscli".into(), "crowdsec".into()];
        config.scenarios_not_containing = vec!["http-probing".into()];
        let app = cerberus::app::start(config).await.unwrap();
        let d = app.decider.clone();
        let bystander = "198.18.0.1".parse().unwrap();
        support::wait_for("first sync", 10, || {
            !d.answer("192.0.2.1".parse().unwrap()).allows()
        })
        .await;
        assert!(d.answer(bystander).allows());
        let first = state.lock().unwrap().requests[0].clone();
        assert!(
            first.contains("origins=cscli%2Ccrowdsec")
                && first.contains("scenarios_not_containing=http-probing"),
            "{first}"
        );

        state.lock().unwrap().behaviour = Behaviour::Status(503, "down");
        let expected = match policy {
            UnreachablePolicy::Closed => Source::FailClosed,
            _ => Source::FailOpen,
        };
        support::wait_for("the outage policy", 15, || {
            d.answer(bystander).source == expected
        })
        .await;
        let banned_ip = d.answer("192.0.2.1".parse().unwrap());
        match policy {
            UnreachablePolicy::Closed => {
                assert_eq!(d.answer(bystander).remediation, Some(Remediation::Ban));
            }
            _ => assert!(banned_ip.allows(), "open lets even known IPs in"),
        }

        state.lock().unwrap().behaviour = Behaviour::Serve;
        support::wait_for("recovery", 15, || {
            d.answer(bystander).source == Source::None
        })
        .await;
        assert!(d.answer(bystander).allows());
        assert_eq!(
            d.answer("192.0.2.1".parse().unwrap()).remediation,
            Some(Remediation::Ban)
        );
        app.stop().await;
    }
}
