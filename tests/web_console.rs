//! The web console on a live standalone daemon, driven over HTTP the way a browser does
//! (cookie, forms, Origin): sign-in refused with a wrong token and nothing else visible;
//! every page leads to sign-in without a session; a change without the CSRF token, or
//! from a foreign Origin or Host, is refused with nothing changed; cookies are HttpOnly
//! and SameSite=Strict; the token never appears in a page; the protection switch, ban
//! and unban act on the hot path (socket lookups) and the switch survives a restart.

mod support;

use bouncer_api::{Client, ClientConfig, Remediation};
use cerberus::app::Running;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use support::admin::with_admin;
use support::web::WebClient;

const PAGES: &[&str] = &["/", "/decisions", "/hub", "/console", "/diagnostics"];

async fn start(dir: &Path) -> Running {
    tokio::time::timeout(
        Duration::from_secs(20),
        cerberus::app::start(with_admin(support::config(dir, None, None))),
    )
    .await
    .expect("start in time")
    .expect("start")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn socket_lookup(app: &Running, addr: &str) -> bouncer_api::LookupAnswer {
    Client::new(ClientConfig::new(&app.config.socket).timeout(Duration::from_secs(5)))
        .lookup(ip(addr))
        .await
        .unwrap()
}

async fn signed_in(app: &Running) -> WebClient {
    let mut web = WebClient::new(app);
    let a = web.sign_in(&app.admin_token).await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location(), Some("/"));
    assert!(web.cookie.is_some());
    web
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_page_leads_to_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let mut web = WebClient::new(&app);
    for page in PAGES.iter().chain(&["/decisions/rows", "/overview/state"]) {
        let a = web.get(page).await;
        assert_eq!((a.status, a.location()), (303, Some("/signin")), "{page}");
        assert!(a.body.is_empty(), "{page} shows nothing: {}", a.body);
    }
    let signin = web.get("/signin").await;
    assert_eq!(signin.status, 200);
    for name in ["Admin token", "Sign in"] {
        assert!(signin.body.contains(name), "{name}");
    }
    assert!(
        signin
            .body
            .contains(&dir.path().join("admin_token").display().to_string()),
        "the page says where the token is"
    );
    let csp = signin.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!signin.body.contains("<script>"), "no inline script");

    // A wrong token: refused, counted, slowed, no cookie, nothing else visible.
    let started = std::time::Instant::now();
    let a = web.sign_in("not-the-token").await;
    assert_eq!(a.status, 401);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "slowed down"
    );
    assert!(a.body.contains("Wrong admin token"));
    assert!(!a.headers.contains_key("set-cookie"));
    assert!(web.cookie.is_none());
    assert!(!a.body.contains("Live decisions") && !a.body.contains("CrowdSec protection"));
    let metrics = reqwest::get(format!("{}/metrics", web.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cerberus_admin_auth_failures_total") && !l.ends_with(" 0")),
        "counted with the admin auth failures"
    );
    // The admin API is still under its prefix, token and all.
    let api = reqwest::get(format!("{}{}/status", web.base, support::admin::PREFIX))
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_pages_carry_the_names_and_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let mut web = WebClient::new(&app);
    let a = web.sign_in(&app.admin_token).await;
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(&app.admin_token));
    assert!(!a.location().unwrap().contains(&app.admin_token));
    let expect: &[(&str, &[&str])] = &[
        (
            "/",
            &[
                "role=\"switch\"",
                ">CrowdSec protection<",
                "Decisions by origin",
                "<svg",
            ],
        ),
        (
            "/decisions",
            &[
                "IP or range",
                "Duration",
                "Reason",
                ">Ban<",
                "1h",
                "4h",
                "24h",
                "7d",
            ],
        ),
        ("/hub", &["hub presets need the managed engine"]),
        ("/console", &["console enrollment needs"]),
        ("/diagnostics", &["Copy JSON", "Checks", "Connectivity"]),
    ];
    for (page, names) in expect {
        let p = web.get(page).await;
        assert_eq!(p.status, 200, "{page}: {}", p.body);
        for link in [
            "Overview",
            "Live decisions",
            "Hub presets",
            "Console enrollment",
            "Diagnostics",
        ] {
            assert!(
                p.body.contains(&format!(">{link}</a>")),
                "{page}: link {link}"
            );
        }
        for n in *names {
            assert!(p.body.contains(n), "{page}: {n}");
        }
        assert!(!p.body.contains(&app.admin_token), "{page} shows the token");
    }
    let js = web.get("/static/app.js").await;
    assert_eq!(js.status, 200);
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    // Sign-out ends the session.
    let out = web.change("/signout", &[]).await;
    assert_eq!((out.status, out.location()), (303, Some("/signin")));
    assert_eq!(web.get("/").await.location(), Some("/signin"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let web = signed_in(&app).await;
    let csrf = web.csrf().await;
    // No CSRF token, a wrong one: refused, protection still on.
    for form in [
        vec![("on", "false")],
        vec![("on", "false"), ("csrf", "0000")],
    ] {
        let a = web.post("/protection", &form).await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("CSRF"));
        assert!(app.decider.enabled());
    }
    let a = web.post("/decisions/ban", &[("value", "192.0.2.66")]).await;
    assert_eq!(a.status, 403);
    assert!(app.decider.answer(ip("192.0.2.66")).allows());
    // A foreign Origin, even with the right token: refused.
    let evil = web
        .http
        .post(format!("{}/protection", web.base))
        .header("cookie", web.cookie.clone().unwrap())
        .header("origin", "http://evil.example")
        .form(&[("on", "false"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    assert!(app.decider.enabled());
    // A rebinding Host (a DNS name pointing at 127.0.0.1): refused, for pages too.
    let port = web.base.rsplit(':').next().unwrap();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let r = web
            .http
            .request(method.clone(), format!("{}/protection", web.base))
            .header("host", format!("rebind.example:{port}"))
            .header("cookie", web.cookie.clone().unwrap())
            .form(&[("on", "false"), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method}");
    }
    assert!(app.decider.enabled());
    // localhost is the listener too.
    let ok = web
        .http
        .get(format!("{}/signin", web.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_ban_and_unban_act_on_the_hot_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let web = signed_in(&app).await;

    // Ban from the form: the row appears and the socket says ban.
    let a = web
        .change(
            "/decisions/ban",
            &[
                ("value", "192.0.2.20"),
                ("duration", "7d"),
                ("reason", "from the console"),
                ("type", "ban"),
            ],
        )
        .await;
    assert_eq!(
        (a.status, a.location()),
        (303, Some("/decisions?ip=192.0.2.20"))
    );
    let page = web.get("/decisions?ip=192.0.2.20").await;
    assert!(
        page.body.contains("Banned 192.0.2.20 (ban) for 168h"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<td>192.0.2.20</td>"));
    assert!(page.body.contains("from the console"));
    assert_eq!(
        socket_lookup(&app, "192.0.2.20").await.remediation,
        Remediation::Ban
    );
    let rows = web.get("/decisions/rows?page=1").await;
    assert!(rows.body.starts_with("<tr") && rows.body.contains("192.0.2.20"));
    // A bad input is shown, named, and bans nothing.
    web.change("/decisions/ban", &[("value", "not-an-ip")])
        .await;
    let page = web.get("/decisions").await;
    assert!(
        page.body.contains("Not banned. IP or range: "),
        "{}",
        page.body
    );

    // Switch off: bypassed; the state survives a restart.
    web.change("/protection", &[("on", "false")]).await;
    let a = socket_lookup(&app, "192.0.2.20").await;
    assert_eq!(a.remediation, Remediation::Allow);
    assert!(a.flags.is_bypassed());
    assert!(web.get("/").await.body.contains(r#"aria-checked="false""#));
    app.stop().await;
    let app = start(dir.path()).await;
    assert!(!app.decider.enabled(), "off survives a restart");
    let web = signed_in(&app).await;
    assert!(web.get("/").await.body.contains(r#"aria-checked="false""#));
    web.change("/protection", &[("on", "true")]).await;
    assert_eq!(
        socket_lookup(&app, "192.0.2.20").await.remediation,
        Remediation::Ban
    );

    // Unban from the row: a confirmation first, then the hot path allows.
    let confirm = web.get("/decisions/confirm?value=192.0.2.20").await;
    assert!(confirm.body.contains("Confirm unban"));
    assert_eq!(
        socket_lookup(&app, "192.0.2.20").await.remediation,
        Remediation::Ban
    );
    web.change("/decisions/unban", &[("value", "192.0.2.20")])
        .await;
    let page = web.get("/decisions").await;
    assert!(
        page.body
            .contains("192.0.2.20 is unbanned: the hot path allows it now."),
        "{}",
        page.body
    );
    assert_eq!(
        socket_lookup(&app, "192.0.2.20").await.remediation,
        Remediation::Allow
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_filters_and_selection() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let web = signed_in(&app).await;
    let admin = support::admin::AdminClient::new(&app);
    for i in 0..120u32 {
        let ty = if i % 2 == 0 { "ban" } else { "captcha" };
        let (s, b) = admin
            .post(
                "/ban",
                serde_json::json!({"value": format!("198.51.100.{}", i), "type": ty}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let p1 = web.get("/decisions").await;
    assert!(
        p1.body.contains("Page 1 of 3 (120 decisions)"),
        "{}",
        p1.body
    );
    assert_eq!(p1.body.matches(">Unban</button>").count(), 50);
    assert!(p1.body.contains("rel=\"next\""));
    let p3 = web.get("/decisions?page=3").await;
    assert_eq!(p3.body.matches(">Unban</button>").count(), 20);
    let captcha = web.get("/decisions?type=captcha").await;
    assert!(captcha.body.contains("(60 decisions)"));
    assert!(!captcha.body.contains("<td>ban</td>"));
    let one = web.get("/decisions?ip=198.51.100.7").await;
    assert!(one.body.contains("(1 decisions)") && one.body.contains("<td>198.51.100.7</td>"));
    let bad = web.get("/decisions?ip=nope").await;
    assert!(bad.body.contains("is not an IPv4 or IPv6 address"));
    // Unban a selection.
    web.change(
        "/decisions/unban",
        &[("value", "198.51.100.1"), ("value", "198.51.100.2")],
    )
    .await;
    for a in ["198.51.100.1", "198.51.100.2"] {
        assert!(app.decider.answer(ip(a)).allows(), "{a}");
    }
    assert!(!app.decider.answer(ip("198.51.100.3")).allows());
    app.stop().await;
}
