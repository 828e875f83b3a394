//! The admin API in standalone mode: the token guards every route and a refused request
//! changes nothing; bad input answers 400 naming the field, an oversized body 413; bans,
//! listing with filters and pages, unban and delete take effect on the hot path at once;
//! the protection switch bypasses every lookup and survives a restart.

mod support;

use bouncer_api::{Client, ClientConfig, Remediation};
use cerberus::app::Running;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use support::admin::{with_admin, AdminClient, PREFIX};

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

fn banned(app: &Running, addr: &str) -> bool {
    !app.decider.answer(ip(addr)).allows()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let admin = AdminClient::new(&app);
    // The generated token is in data_dir/admin_token, mode 0600.
    let file = dir.path().join("admin_token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        app.admin_token
    );
    assert!(app.admin_token.len() >= 32);

    let (status, body) = admin.post("/ban", json!({"value": "192.0.2.1"})).await;
    assert_eq!(status, 201, "{body}");
    let http = reqwest::Client::new();
    let wrong = format!("{}x", app.admin_token);
    let attempts: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no token", http.post(admin.url("/disable"))),
        (
            "wrong token",
            http.post(admin.url("/disable")).bearer_auth(&wrong),
        ),
        (
            "not bearer",
            http.post(admin.url("/disable"))
                .header("Authorization", format!("Basic {}", app.admin_token)),
        ),
        (
            "token in query",
            http.post(format!(
                "{}?token={}",
                admin.url("/disable"),
                app.admin_token
            )),
        ),
        (
            "token in query too",
            http.post(format!(
                "{}?access_token={}",
                admin.url("/disable"),
                app.admin_token
            ))
            .bearer_auth(&app.admin_token),
        ),
        (
            "unban, no token",
            http.post(admin.url("/unban"))
                .json(&json!({"value": "192.0.2.1"})),
        ),
        (
            "unban, wrong token",
            http.post(admin.url("/unban"))
                .bearer_auth(&wrong)
                .json(&json!({"value": "192.0.2.1"})),
        ),
        (
            "ban, wrong token",
            http.post(admin.url("/ban"))
                .bearer_auth(&wrong)
                .json(&json!({"value": "192.0.2.2"})),
        ),
        ("delete, no token", http.delete(admin.url("/decisions/-1"))),
        ("list, no token", http.get(admin.url("/decisions"))),
        (
            "status, wrong token",
            http.get(admin.url("/status")).bearer_auth(&wrong),
        ),
    ];
    for (what, req) in attempts {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{what}");
        assert!(resp.headers().contains_key("www-authenticate"), "{what}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    // Nothing changed.
    assert!(app.decider.enabled());
    assert!(banned(&app, "192.0.2.1"));
    assert!(!banned(&app, "192.0.2.2"));
    let (_, list) = admin.get("/decisions").await;
    assert_eq!(list["total"], 1, "{list}");

    // The open routes need no token.
    for path in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{path}", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_big_bodies_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let admin = AdminClient::new(&app);
    let cases = [
        ("/ban", json!({"value": "300.1.2.3"}), "value"),
        ("/ban", json!({"value": "192.0.2.1/33"}), "value"),
        ("/ban", json!({"value": 17}), "value"),
        ("/ban", json!({}), "value"),
        (
            "/ban",
            json!({"value": "192.0.2.1", "duration": "forever"}),
            "duration",
        ),
        (
            "/ban",
            json!({"value": "192.0.2.1", "duration": "-5m"}),
            "duration",
        ),
        (
            "/ban",
            json!({"value": "192.0.2.1", "duration": "0s"}),
            "duration",
        ),
        (
            "/ban",
            json!({"value": "192.0.2.1", "type": "ban now"}),
            "type",
        ),
        (
            "/ban",
            json!({"value": "192.0.2.1", "reason": "x".repeat(300)}),
            "reason",
        ),
        (
            "/ban",
            json!({"value": "192.0.2.1", "colour": "red"}),
            "colour",
        ),
        ("/unban", json!({"value": "not an ip"}), "value"),
        ("/unban", json!({"ip": "192.0.2.1"}), "ip"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = admin.post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["field"], field, "{path} {body}: {answer}");
        assert!(answer["error"].as_str().unwrap().len() > 10, "{answer}");
    }
    let raw = |body: &'static str| {
        admin
            .http
            .post(admin.url("/ban"))
            .bearer_auth(&admin.token)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in ["", "not json", "[1,2]", "{\"value\":"] {
        let r = raw(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], "body", "{body:?}: {v}");
    }
    for (path, field) in [
        ("/decisions?limit=0", "limit"),
        ("/decisions?limit=100000", "limit"),
        ("/decisions?offset=-2", "offset"),
        ("/decisions?ip=1.2.3", "ip"),
        ("/decisions?scope=country", "scope"),
        ("/decisions?sort=id", "sort"),
    ] {
        let (status, v) = admin.get(path).await;
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some(field)),
            "{path}: {v}"
        );
    }
    let (status, v) = admin.delete("/decisions/abc").await;
    assert_eq!((status, v["field"].as_str()), (400, Some("id")), "{v}");

    // Over the limit: 413, with or without a Content-Length.
    let big = format!(
        "{{\"value\":\"192.0.2.1\",\"reason\":\"{}\"}}",
        "a".repeat(70_000)
    );
    let r = admin
        .http
        .post(admin.url("/ban"))
        .bearer_auth(&admin.token)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = admin
        .http
        .post(admin.url("/ban"))
        .bearer_auth(&admin.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Unknown routes and methods.
    let (status, _) = admin.get("/nope").await;
    assert_eq!(status, 404);
    let r = admin
        .http
        .get(admin.url("/unban"))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // None of it created anything.
    let (_, list) = admin.get("/decisions").await;
    assert_eq!(list["total"], 0, "{list}");
    assert!(!banned(&app, "192.0.2.1"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_list_unban_and_delete_reach_the_hot_path_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let admin = AdminClient::new(&app);

    let (status, b) = admin
        .post(
            "/ban",
            json!({"value": "192.0.2.10", "duration": "1h", "reason": "scraping"}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(
        (b["via"].as_str(), b["enforced"].as_bool()),
        (Some("local"), Some(true))
    );
    assert!(b["id"].as_i64().unwrap() < 0, "local ids are negative: {b}");
    // On the hot path as soon as the answer is out.
    assert!(banned(&app, "192.0.2.10"));
    let (status, r) = admin
        .post(
            "/ban",
            json!({"value": "198.51.100.0/24", "type": "captcha", "duration": "30m"}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        app.decider
            .answer(ip("198.51.100.7"))
            .remediation
            .map(|r| r.as_str()),
        Some("captcha")
    );

    let (status, list) = admin.get("/decisions").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2, "{list}");
    let single = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["value"] == "192.0.2.10")
        .unwrap()
        .clone();
    assert_eq!(single["scope"], "Ip");
    assert_eq!(single["type"], "ban");
    assert_eq!(single["origin"], "cerberus");
    assert_eq!(single["scenario"], "scraping");
    assert_eq!(single["country"], Value::Null, "no watcher, no country");
    let left = single["remaining_seconds"].as_u64().unwrap();
    assert!((3590..=3601).contains(&left), "{single}");
    assert!(
        humantime::parse_rfc3339(single["expires_at"].as_str().unwrap()).is_ok(),
        "{single}"
    );

    for (query, values) in [
        ("?scope=range", vec!["198.51.100.0/24"]),
        ("?scope=IP", vec!["192.0.2.10"]),
        ("?ip=198.51.100.99", vec!["198.51.100.0/24"]),
        ("?ip=::ffff:192.0.2.10", vec!["192.0.2.10"]),
        ("?type=captcha", vec!["198.51.100.0/24"]),
        ("?scenario=SCRAP", vec!["192.0.2.10"]),
        ("?origin=cscli", vec![]),
    ] {
        let (status, l) = admin.get(&format!("/decisions{query}")).await;
        assert_eq!(status, 200, "{query}");
        let got: Vec<&str> = l["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["value"].as_str().unwrap())
            .collect();
        assert_eq!(got, values, "{query}");
        assert_eq!(l["total"], values.len(), "{query}");
    }

    // Pages: disjoint, complete, highest id first.
    for i in 0..5 {
        let (status, _) = admin
            .post("/ban", json!({"value": format!("203.0.113.{i}")}))
            .await;
        assert_eq!(status, 201);
    }
    let mut seen = Vec::new();
    for offset in [0, 3, 6] {
        let (_, page) = admin
            .get(&format!("/decisions?limit=3&offset={offset}"))
            .await;
        assert_eq!(page["total"], 7);
        for d in page["decisions"].as_array().unwrap() {
            seen.push(d["id"].as_i64().unwrap());
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "pages overlap or are out of order");
    assert_eq!(seen.len(), 7);

    // Unban: allowed at once; a second unban finds nothing.
    let (status, u) = admin.post("/unban", json!({"value": "192.0.2.10"})).await;
    assert_eq!(status, 200, "{u}");
    assert!(!banned(&app, "192.0.2.10"));
    assert_eq!(u["lifted"].as_array().unwrap().len(), 1, "{u}");
    assert_eq!(u["lapi"]["deleted"], Value::Null, "{u}");
    let (status, u) = admin.post("/unban", json!({"value": "192.0.2.10"})).await;
    assert_eq!((status, u["field"].as_str()), (404, Some("value")), "{u}");
    // An IP inside a banned range lifts the range (as LAPI's delete does).
    let (status, u) = admin.post("/unban", json!({"value": "198.51.100.7"})).await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(u["lifted"][0]["value"], "198.51.100.0/24");
    assert!(!banned(&app, "198.51.100.8"));

    // Delete by id.
    let id = seen[2];
    let (status, d) = admin.delete(&format!("/decisions/{id}")).await;
    assert_eq!(status, 200, "{d}");
    let (status, _) = admin.delete(&format!("/decisions/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = admin.get("/decisions").await;
    assert_eq!(list["total"], 4, "{list}");

    // Local bans live in SQLite: a restart keeps them, and keeps the unbans.
    app.stop().await;
    let app = start(dir.path()).await;
    let (_, list) = AdminClient::new(&app).get("/decisions").await;
    assert_eq!(list["total"], 4, "{list}");
    assert!(banned(&app, "203.0.113.4"));
    assert!(
        !banned(&app, "203.0.113.0"),
        "deleted by id before the restart"
    );
    assert!(!banned(&app, "192.0.2.10"));
    // A new local ban after the restart gets an id below every persisted one.
    let lowest = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .min()
        .unwrap();
    let (status, b) = AdminClient::new(&app)
        .post("/ban", json!({"value": "203.0.113.99"}))
        .await;
    assert_eq!(status, 201, "{b}");
    assert!(b["id"].as_i64().unwrap() < lowest, "{b} vs {lowest}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_bypasses_every_lookup_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let admin = AdminClient::new(&app);
    let (status, _) = admin.post("/ban", json!({"value": "192.0.2.20"})).await;
    assert_eq!(status, 201);
    let socket = |app: &Running| {
        Client::new(ClientConfig::new(&app.config.socket).timeout(Duration::from_secs(5)))
    };
    let answer = socket(&app).lookup(ip("192.0.2.20")).await.unwrap();
    assert_eq!(answer.remediation, Remediation::Ban);

    let (status, off) = admin.post_empty("/disable").await;
    assert_eq!(status, 200);
    assert_eq!(
        (off["enabled"].as_bool(), off["changed"].as_bool()),
        (Some(false), Some(true))
    );
    let before = app.decider.lookups();
    let c = socket(&app);
    for _ in 0..10 {
        let a = c.lookup(ip("192.0.2.20")).await.unwrap();
        assert_eq!(a.remediation, Remediation::Allow);
        assert!(a.flags.is_bypassed(), "answer is marked bypassed");
    }
    assert!(
        app.decider.lookups() >= before + 10,
        "bypassed lookups are counted"
    );
    let (_, status_doc) = admin.get("/status").await;
    assert_eq!(status_doc["enabled"], false);
    app.stop().await;

    let app = start(dir.path()).await;
    let admin = AdminClient::new(&app);
    assert!(!app.decider.enabled(), "off survives a restart");
    assert!(app.decider.answer(ip("192.0.2.20")).allows());
    let (status, on) = admin.post_empty("/enable").await;
    assert_eq!((status, on["enabled"].as_bool()), (200, Some(true)));
    assert_eq!(
        socket(&app)
            .lookup(ip("192.0.2.20"))
            .await
            .unwrap()
            .remediation,
        Remediation::Ban
    );
    app.stop().await;

    let app = start(dir.path()).await;
    assert!(app.decider.enabled(), "on survives a restart");
    let (_, s) = AdminClient::new(&app).get("/status").await;
    assert_eq!(s["mode"], "standalone");
    assert_eq!(s["enabled"], true);
    assert_eq!(s["decisions"]["total"], 1, "{s}");
    assert_eq!(s["decisions"]["by_origin"]["cerberus"], 1, "{s}");
    assert_eq!(s["lapi"], Value::Null);
    let _ = PREFIX;
    app.stop().await;
}
