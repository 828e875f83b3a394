//! The forward_auth door with a real HTTP client: each remediation's answer, the client
//! IP from the header walked right to left past trusted proxies, the peer address as a
//! fallback, spoofed entries, bad headers, templates with HTML escaping, a Unix socket.

mod support;

use cerberus::app::Running;
use cerberus::config::{Config, Listen};
use cerberus::decision::{Decision, Target};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

fn decision(id: i64, value: &str, type_name: &str, scenario: &str, secs: u32) -> Decision {
    Decision {
        id,
        target: Target::parse(value).unwrap(),
        type_name: type_name.into(),
        origin: "cscli".into(),
        scenario: scenario.into(),
        expires_at: cerberus::clock::now_secs_precise() + secs,
    }
}

async fn daemon(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> (Running, String) {
    let mut config = support::config(dir, None, None);
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    tweak(&mut config);
    let app = tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .unwrap()
        .unwrap();
    let w = vec![
        decision(1, "192.0.2.1", "ban", "crowdsecurity/ssh-bf", 3600),
        decision(
            2,
            "192.0.2.2",
            "captcha",
            "crowdsecurity/http-probing",
            3600,
        ),
        decision(3, "192.0.2.3", "throttle", "crowdsecurity/http-crawl", 30),
        decision(4, "2001:db8::/64", "ban", "v6 range", 3600),
        decision(
            5,
            "192.0.2.5",
            "ban",
            "<script>alert(\"x\")</script> & 'co'",
            3600,
        ),
    ];
    app.control.insert(w).await.unwrap();
    let url = format!("http://{}", app.forward_auth_addr.clone().unwrap());
    (app, url)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(LIMIT).build().unwrap()
}

fn remediation(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cerberus-remediation")
        .expect("every answer has X-Cerberus-Remediation")
        .to_str()
        .unwrap()
        .to_string()
}

async fn ask(url: &str, xff: Option<&str>) -> (u16, String, String) {
    let mut req = http().get(format!("{url}/any/path?x=1"));
    if let Some(v) = xff {
        req = req.header("X-Forwarded-For", v);
    }
    let r = req.send().await.unwrap();
    let rem = remediation(&r);
    (r.status().as_u16(), rem, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_remediation_has_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = daemon(dir.path(), |_| {}).await;

    let (status, rem, body) = ask(&url, Some("198.51.100.9")).await;
    assert_eq!((status, rem.as_str(), body.as_str()), (200, "allow", ""));

    let r = http()
        .post(format!("{url}/"))
        .header("X-Forwarded-For", "192.0.2.1")
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("X-Request-Id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(remediation(&r), "ban");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(
        body.contains("192.0.2.1") && body.contains("req-42"),
        "{body}"
    );

    // Only JSON accepted: JSON.
    let r = http()
        .get(format!("{url}/api"))
        .header("X-Forwarded-For", "192.0.2.1")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["remediation"], "ban");
    assert_eq!(v["ip"], "192.0.2.1");
    assert_eq!(v["origin"], "cscli");
    assert_eq!(v["scenario"], "crowdsecurity/ssh-bf");
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // Captcha: refused like a ban until captcha support exists.
    let (status, rem, _) = ask(&url, Some("192.0.2.2")).await;
    assert_eq!((status, rem.as_str()), (403, "captcha"));

    // Throttle: 429 with Retry-After.
    let r = http()
        .get(&url)
        .header("X-Forwarded-For", "192.0.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(remediation(&r), "throttle");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // IPv6 in a banned range, and with brackets and a port.
    let (status, rem, _) = ask(&url, Some("2001:db8::abcd")).await;
    assert_eq!((status, rem.as_str()), (403, "ban"));
    let (status, _, _) = ask(&url, Some("[2001:db8::abcd]:4431")).await;
    assert_eq!(status, 403);
    // IPv4-mapped IPv6 is the IPv4 address.
    let (status, _, _) = ask(&url, Some("::ffff:192.0.2.1")).await;
    assert_eq!(status, 403);

    // Protection off: allow.
    app.decider.set_enabled(false);
    let (status, rem, _) = ask(&url, Some("192.0.2.1")).await;
    assert_eq!((status, rem.as_str()), (200, "allow"));
    app.decider.set_enabled(true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_walks_the_header_right_to_left_past_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = daemon(dir.path(), |c| {
        c.trusted_proxies = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:ffff::/48".parse().unwrap(),
        ];
    })
    .await;
    // The peer (127.0.0.1) is banned: it decides only when the header does not.
    let w = vec![decision(9, "127.0.0.1", "ban", "peer", 3600)];
    app.control.insert(w).await.unwrap();

    // Trusted hops on the right are skipped.
    let (status, _, _) = ask(&url, Some("192.0.2.1, 10.1.2.3, 10.9.9.9")).await;
    assert_eq!(status, 403);
    let (status, _, _) = ask(&url, Some("192.0.2.1, 2001:db8:ffff::1")).await;
    assert_eq!(status, 403);
    // Several header lines form one list.
    let r = http()
        .get(&url)
        .header("X-Forwarded-For", "192.0.2.1")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // A client that prepends an address of its own (spoofing) does not choose the
    // verdict: the first untrusted entry from the right is the client.
    let (status, _, _) = ask(&url, Some("203.0.113.7, 192.0.2.1")).await;
    assert_eq!(
        status, 403,
        "a banned client cannot hide behind a forged entry"
    );
    let (status, _, _) = ask(&url, Some("192.0.2.1, 203.0.113.7")).await;
    assert_eq!(
        status, 200,
        "a forged banned address on the left is not read"
    );
    let (status, _, _) = ask(&url, Some("192.0.2.1, 203.0.113.7, 10.0.0.2")).await;
    assert_eq!(status, 200);

    // No header, or only trusted entries: the peer address (banned here).
    let (status, _, body) = ask(&url, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("127.0.0.1"), "{body}");
    let (status, _, _) = ask(&url, Some("10.0.0.1, 10.0.0.2")).await;
    assert_eq!(status, 403);

    // A header that is not an address list: 400 with a reason.
    for bad in ["nonsense", "192.0.2.1, unknown", "300.0.0.1"] {
        let (status, rem, body) = ask(&url, Some(bad)).await;
        assert_eq!((status, rem.as_str()), (400, "invalid"), "{bad}");
        assert!(body.contains("is not an IP address"), "{body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_header_status_and_template() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("ban.html");
    std::fs::write(
        &template,
        "<h1>{{ remediation }}</h1><p>{{ip}}</p><p>{{scenario}}</p><p>{{origin}}</p><p>{{request_id}}</p>{{unknown}}",
    )
    .unwrap();
    let tpl = template.clone();
    let (app, url) = daemon(dir.path(), move |c| {
        c.client_ip_header = "X-Real-IP".into();
        c.ban_status = 451;
        c.ban_template = Some(tpl);
    })
    .await;
    let r = http()
        .get(&url)
        .header("X-Real-IP", "192.0.2.5")
        .header("X-Forwarded-For", "198.51.100.1")
        .header("X-Request-Id", "<id>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 451);
    assert_eq!(remediation(&r), "ban");
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        "<h1>ban</h1><p>192.0.2.5</p><p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;co&#39;</p><p>cscli</p><p>&lt;id&gt;</p>{{unknown}}"
    );
    // X-Forwarded-For is not the configured header: ignored.
    let r = http()
        .get(&url)
        .header("X-Forwarded-For", "192.0.2.5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.sock");
    let p = path.clone();
    let (app, _) = {
        let mut config = support::config(dir.path(), None, None);
        config.forward_auth_listen = Listen::Unix(p);
        let app = cerberus::app::start(config).await.unwrap();
        let w = vec![decision(1, "192.0.2.1", "ban", "s", 3600)];
        app.control.insert(w).await.unwrap();
        (app, ())
    };
    assert_eq!(
        app.forward_auth_addr.as_deref(),
        Some(format!("unix:{}", path.display()).as_str())
    );
    async fn raw(path: &std::path::Path, header: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        let req = format!("GET /x HTTP/1.1\r\nHost: cerberus\r\n{header}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(LIMIT, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }
    let out = raw(&path, "X-Forwarded-For: 192.0.2.1\r\n").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-cerberus-remediation: ban"),
        "{out}"
    );
    let out = raw(&path, "X-Forwarded-For: 192.0.2.7\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // No header and a peer without an IP address: 400.
    let out = raw(&path, "").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("no client address"), "{out}");
    tokio::time::timeout(LIMIT, app.stop()).await.unwrap();
    assert!(!path.exists(), "shutdown removes the forward_auth socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_addresses_are_logged_and_a_taken_port_fails_start_cleanly() {
    let logs = support::logs();
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = daemon(dir.path(), |_| {}).await;
    let text = logs.text();
    let socket_line = format!(
        "listening for Caddy module lookups on unix:{}",
        app.config.socket.display()
    );
    assert!(text.contains(&socket_line), "{text}");
    let fa_line = format!(
        "listening for Caddy forward_auth on {}",
        url.trim_start_matches("http://")
    );
    assert!(text.contains(&fa_line), "{text}");

    // Another daemon whose forward_auth port is taken: start fails, naming the key,
    // and leaves no socket behind.
    let other = tempfile::tempdir().unwrap();
    let mut config = support::config(other.path(), None, None);
    config.forward_auth_listen = Listen::Tcp(url.trim_start_matches("http://").to_string());
    let err = tokio::time::timeout(LIMIT, cerberus::app::start(config.clone()))
        .await
        .unwrap()
        .err()
        .expect("the port is taken");
    assert!(
        format!("{err:#}").contains("forward_auth_listen"),
        "{err:#}"
    );
    assert!(
        !config.socket.exists(),
        "the socket of the failed start is removed"
    );
    app.stop().await;
}
