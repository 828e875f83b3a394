//! Loopback stand-ins for the services a captcha or AppSec verdict reaches out to.
//!
//! [`provider`]: a captcha provider's siteverify, answering as Turnstile's, hCaptcha's
//! and reCAPTCHA's do (a form POST of `secret`, `response`, `remoteip`; JSON
//! `{"success": bool, "error-codes": [..]}`, the shapes documented by Cloudflare,
//! hCaptcha and Google and sent by crowdsecurity/lua-cs-bouncer
//! `lib/plugins/crowdsec/captcha.lua` `M.Validate`). The token `good` solves.
//!
//! [`appsec`]: an AppSec component answering as crowdsec v1.7.8 `pkg/appsec/appsec.go`
//! `GenerateResponse` does: 200 `{"action":"allow","http_status":200}`, or 403 with
//! the remediation's action (`{"action":"captcha","http_status":403}`), chosen by the
//! `X-Crowdsec-Appsec-Uri` the bouncer sends. For what the real component cannot be
//! made to answer here on demand; the real one is `support::appsec`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A loopback siteverify. `release` false holds every answer until it turns true;
/// `received` counts the requests read.
pub struct Provider {
    pub url: String,
    pub received: Arc<AtomicUsize>,
    pub release: watch::Sender<bool>,
}

pub async fn provider(hold: bool) -> Provider {
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
                let (_, body) = read_request(&mut s).await;
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

/// Reads one HTTP request; returns its head and body.
async fn read_request(s: &mut tokio::net::TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return (String::new(), String::new());
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
                return (head.to_string(), body.to_string());
            }
        }
    }
}

/// An AppSec stand-in: `captcha_for` and `ban_for` are URI prefixes; `calls` counts
/// the requests answered.
pub struct Appsec {
    pub url: String,
    pub calls: Arc<AtomicUsize>,
}

pub async fn appsec(captcha_for: &'static str, ban_for: &'static str) -> Appsec {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let (head, _) = read_request(&mut s).await;
                let uri = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("x-crowdsec-appsec-uri")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                count.fetch_add(1, Ordering::SeqCst);
                let (status, action) = if uri.starts_with(captcha_for) {
                    ("403 Forbidden", "captcha")
                } else if uri.starts_with(ban_for) {
                    ("403 Forbidden", "ban")
                } else {
                    ("200 OK", "allow")
                };
                let code = &status[..3];
                let answer = format!("{{\"action\":\"{action}\",\"http_status\":{code}}}");
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Appsec { url, calls }
}
