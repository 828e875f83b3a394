//! The flow against a loopback stand-in of the provider's siteverify (shapes as in
//! `verify.rs`: form POST of secret/response/remoteip, JSON `{"success": bool}`).

use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;

/// Answers each POST: `success` when the body names `response=good` and the right
/// secret; `status` other than 200 answers that status instead.
fn stand_in(status: u16) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/siteverify", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        l.set_nonblocking(false).unwrap();
        for stream in l.incoming().take(1) {
            let mut s = stream.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        bodies.push(body.to_string());
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let body = bodies.last().cloned().unwrap_or_default();
            let ok = body.contains("secret=s3cret") && body.contains("response=good");
            let answer = format!("{{\"success\": {ok}, \"error-codes\": []}}");
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            s.write_all(reply.as_bytes()).unwrap();
        }
        bodies
    });
    (url, h)
}

fn captcha(dir: &Path, verify_url: &str) -> Captcha {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.captcha.provider = Some(CaptchaProvider::Turnstile);
    config.captcha.site_key = "site".into();
    config.captcha.secret_key = "s3cret".into();
    config.captcha.verify_url = Some(verify_url.into());
    Captcha::new(&config).unwrap().unwrap()
}

fn ask<'a>(method: &'a str, uri: &'a str, cookie: Option<&'a str>) -> Ask<'a> {
    Ask {
        ip: "192.0.2.7".parse().unwrap(),
        method,
        uri,
        https: false,
        cookie,
    }
}

#[tokio::test]
async fn challenge_solve_cookie_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = stand_in(200);
    let c = captcha(dir.path(), &url);
    let key = std::fs::read_to_string(dir.path().join(SIGNING_KEY_FILE)).unwrap();
    assert_eq!(key.len(), 64, "a generated key of 32 random bytes, hex");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(SIGNING_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let Reply::Challenge { page, csp } = c.decide(&ask("GET", "/shop?x=1", None), 100).await else {
        panic!("a GET without cookie is challenged");
    };
    assert!(page.contains("class=\"cf-turnstile\""));
    assert!(csp.contains("'nonce-"));
    assert_eq!(
        c.decide(&ask("POST", "/shop", None), 100).await,
        Reply::Refuse("method")
    );

    let solve = "/shop?__cerberus_captcha=%2Fshop%3Fx%3D1&cf-turnstile-response=good";
    let Reply::Solved {
        location,
        set_cookie,
    } = c.decide(&ask("GET", solve, None), 100).await
    else {
        panic!("a good token solves");
    };
    assert_eq!(location, "/shop?x=1");
    let bodies = server.join().unwrap();
    assert!(bodies[0].contains("remoteip=192.0.2.7"), "{bodies:?}");
    let value = set_cookie
        .strip_prefix("cerberus_captcha=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(
        c.decide(&ask("GET", "/other", Some(value)), 101).await,
        Reply::Pass
    );
    assert_eq!(
        c.decide(&ask("POST", "/other", Some(value)), 101).await,
        Reply::Pass
    );
    let later = 100 + 3600;
    assert!(matches!(
        c.decide(&ask("GET", "/other", Some(value)), later).await,
        Reply::Challenge { .. }
    ));
    let mut other_ip = ask("GET", "/other", Some(value));
    other_ip.ip = "192.0.2.8".parse().unwrap();
    assert!(matches!(
        c.decide(&other_ip, 101).await,
        Reply::Challenge { .. }
    ));
}

#[tokio::test]
async fn a_rejected_token_is_challenged_again_and_a_dead_provider_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = stand_in(200);
    let c = captcha(dir.path(), &url);
    let bad = "/?__cerberus_captcha=%2F&cf-turnstile-response=forged";
    assert!(matches!(
        c.decide(&ask("GET", bad, None), 1).await,
        Reply::Challenge { .. }
    ));
    server.join().unwrap();
    assert_eq!(c.verifier().reach(), verify::Reach::Reachable);

    let (url, server) = stand_in(502);
    let c = captcha(dir.path(), &url);
    let good = "/?__cerberus_captcha=%2F&cf-turnstile-response=good";
    assert_eq!(
        c.decide(&ask("GET", good, None), 1).await,
        Reply::Refuse("unreachable")
    );
    server.join().unwrap();
    assert_eq!(c.verifier().reach(), verify::Reach::Unreachable);

    // Nothing listens: refused too, and an open redirect is never offered.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    drop(l);
    let c = captcha(dir.path(), &url);
    assert_eq!(
        c.decide(&ask("GET", good, None), 1).await,
        Reply::Refuse("unreachable")
    );
}

#[tokio::test]
async fn challenges_count_as_dropped_and_a_solve_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = stand_in(200);
    let c = captcha(dir.path(), &url);
    let usage = crate::usage::Usage::default();
    let dropped = |u: &crate::usage::Usage| {
        u.totals()
            .dropped
            .get(&("cscli".to_string(), "captcha".to_string()))
            .copied()
            .unwrap_or(0)
    };
    let first = c
        .answer(&ask("GET", "/", None), 1, &usage, "cscli", "s")
        .await;
    assert!(matches!(first, Reply::Challenge { .. }));
    assert_eq!(dropped(&usage), 1, "a challenge is a dropped request");
    let post = c
        .answer(&ask("POST", "/", None), 1, &usage, "cscli", "s")
        .await;
    assert_eq!(post, Reply::Refuse("method"));
    assert_eq!(dropped(&usage), 2, "a refusal too");
    let solve = "/?__cerberus_captcha=%2F&cf-turnstile-response=good";
    let solved = c
        .answer(&ask("GET", solve, None), 1, &usage, "cscli", "s")
        .await;
    server.join().unwrap();
    let Reply::Solved { set_cookie, .. } = solved else {
        panic!("solved: {solved:?}");
    };
    assert_eq!(dropped(&usage), 2, "a solve is processed, not dropped");
    let value = set_cookie["cerberus_captcha=".len()..]
        .split(';')
        .next()
        .unwrap();
    let pass = c
        .answer(&ask("GET", "/", Some(value)), 2, &usage, "cscli", "s")
        .await;
    assert_eq!(pass, Reply::Pass);
    assert_eq!(dropped(&usage), 2, "nor is a pass with the cookie");
}
