//! docs/admin-api.yaml against the server: the document lists exactly the routes of
//! `cerberus::admin::ROUTES` (and says which need the token), and every answer of a
//! running daemon, success and error alike, has a documented status and matches the
//! documented schema.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::admin::{with_admin, PREFIX};

fn document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/admin-api.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            assert!(!cur.is_null(), "dangling $ref {r}");
            resolve(doc, cur)
        }
        None => v,
    }
}

/// A small JSON Schema check: type, nullable, enum, required, properties,
/// additionalProperties: false, items.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if v.is_null() {
        return if schema["nullable"] == true || schema.get("type").is_none() {
            Ok(())
        } else {
            Err(format!("{at}: null, but not nullable"))
        };
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "" => true,
        other => return Err(format!("{at}: unknown schema type {other}")),
    };
    if !ok {
        return Err(format!("{at}: expected {ty}, got {v}"));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !obj.contains_key(key) {
                return Err(format!("{at}: required `{key}` missing in {v}"));
            }
        }
        let props = schema["properties"].as_object();
        for (key, value) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(s) => validate(doc, s, value, &format!("{at}.{key}"))?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}: `{key}` is not documented"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), v.as_array()) {
        for (i, item) in list.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The document's path template matching a concrete path.
fn template<'a>(doc: &'a Value, path: &str) -> &'a str {
    let path = path.split('?').next().unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|t| {
            let (a, b): (Vec<&str>, Vec<&str>) =
                (t.split('/').collect(), path.split('/').collect());
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || x.starts_with('{'))
        })
        .unwrap_or_else(|| panic!("{path} is not in the document"))
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let doc = document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let mut served = BTreeSet::new();
    for &(method, path, auth) in cerberus::admin::ROUTES {
        let full = if auth {
            format!("{PREFIX}{path}")
        } else {
            path.to_string()
        };
        let op = &doc["paths"][&full][method.to_lowercase()];
        assert!(op.is_object(), "{method} {full} is not documented");
        let open = op["security"].as_array().is_some_and(|s| s.is_empty());
        assert_eq!(
            open, !auth,
            "{method} {full}: the document is wrong about the token"
        );
        if auth {
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {full}: no 401"
            );
        }
        served.insert((method.to_string(), full));
    }
    assert_eq!(documented, served, "the document and the server differ");
}

struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    token: bool,
    status: u16,
}

fn call(method: &'static str, path: &str, body: Option<Value>, status: u16) -> Call {
    Call {
        method,
        path: path.to_string(),
        body,
        token: path.starts_with(PREFIX),
        status,
    }
}

async fn check_calls(
    app: &cerberus::app::Running,
    calls: Vec<Call>,
    hit: &mut BTreeSet<(String, String)>,
) {
    let doc = document();
    let base = format!("http://{}", app.admin_addr.as_deref().unwrap());
    let http = reqwest::Client::new();
    for c in calls {
        let mut req = http.request(c.method.parse().unwrap(), format!("{base}{}", c.path));
        if c.token {
            req = req.bearer_auth(&app.admin_token);
        }
        if let Some(b) = &c.body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let what = format!("{} {} -> {status}", c.method, c.path);
        assert_eq!(status, c.status, "{what}: {text}");
        let t = template(&doc, &c.path);
        let op = &doc["paths"][t][c.method.to_lowercase()];
        let documented = resolve(&doc, &op["responses"][status.to_string()]);
        assert!(documented.is_object(), "{what}: status not documented");
        if ctype.starts_with("application/json") {
            let schema = &documented["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{what}: JSON answer, but no JSON schema documented"
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            validate(&doc, schema, &v, "body").unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
        } else {
            assert!(ctype.starts_with("text/plain"), "{what}: {ctype}");
            assert!(
                documented["content"]["text/plain"].is_object(),
                "{what}: text not documented"
            );
        }
        if (200..300).contains(&status) {
            hit.insert((c.method.to_string(), t.to_string()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_document() {
    let mut hit = BTreeSet::new();
    let p = |s: &str| format!("{PREFIX}{s}");

    // Standalone.
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(with_admin(support::config(dir.path(), None, None)))
        .await
        .unwrap();
    let mut calls = vec![
        call("GET", "/healthz", None, 200),
        call("GET", "/readyz", None, 200),
        call("GET", "/metrics", None, 200),
        call("GET", &p("/status"), None, 200),
        call("POST", &p("/disable"), None, 200),
        call("POST", &p("/enable"), None, 200),
        call(
            "POST",
            &p("/ban"),
            Some(json!({"value": "192.0.2.1", "reason": "doc"})),
            201,
        ),
        call(
            "POST",
            &p("/ban"),
            Some(json!({"value": "198.51.100.0/24", "type": "captcha"})),
            201,
        ),
        call("POST", &p("/ban"), Some(json!({"value": "x"})), 400),
        call(
            "POST",
            &p("/ban"),
            Some(json!({"value": "192.0.2.1", "why": 1})),
            400,
        ),
        call(
            "POST",
            &p("/ban"),
            Some(json!({"value": "192.0.2.1", "reason": "r".repeat(70_000)})),
            413,
        ),
        call("GET", &p("/decisions"), None, 200),
        call(
            "GET",
            &p("/decisions?scope=range&limit=5&offset=0"),
            None,
            200,
        ),
        call("GET", &p("/decisions?limit=0"), None, 400),
        call("DELETE", &p("/decisions/-1"), None, 200),
        call("DELETE", &p("/decisions/-1"), None, 404),
        call("DELETE", &p("/decisions/abc"), None, 400),
        call(
            "POST",
            &p("/unban"),
            Some(json!({"value": "198.51.100.5"})),
            200,
        ),
        call(
            "POST",
            &p("/unban"),
            Some(json!({"value": "198.51.100.5"})),
            404,
        ),
        call("POST", &p("/unban"), Some(json!({"value": 5})), 400),
        call("GET", &p("/diagnostics/connectivity"), None, 200),
        call("GET", &p("/diagnostics/config"), None, 200),
        // Hub presets need the managed engine (their successes are checked in the
        // engine tests).
        call("GET", &p("/hub/presets"), None, 409),
        call(
            "POST",
            &p("/hub/presets/install"),
            Some(json!({"name": "crowdsecurity/caddy"})),
            409,
        ),
        call("GET", &p("/console/status"), None, 409),
        call("POST", &p("/console/heartbeat"), None, 409),
        call("POST", &p("/capi/register"), None, 409),
        call(
            "POST",
            &p("/console/enroll"),
            Some(json!({"enrollment_key": "k"})),
            409,
        ),
        call(
            "POST",
            &p("/hub/presets/remove"),
            Some(json!({"name": "crowdsecurity/caddy"})),
            409,
        ),
    ];
    // And the 401 of every route that needs the token.
    for &(method, path, auth) in cerberus::admin::ROUTES {
        if auth {
            let path = p(&path.replace("{id}", "1"));
            calls.push(Call {
                method,
                path,
                body: Some(json!({"value": "192.0.2.1"})),
                token: false,
                status: 401,
            });
        }
    }
    check_calls(&app, calls, &mut hit).await;
    app.stop().await;

    // LAPI mode (a stand-in LAPI), without watcher credentials.
    let (url, _) = support::serve_body(support::startup_body(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = cerberus::app::start(with_admin(support::config(
        dir.path(),
        Some(&url),
        Some("k"),
    )))
    .await
    .unwrap();
    support::wait_for("first sync", 20, || {
        app.stats
            .first_sync_done
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let calls = vec![
        call("GET", &p("/status"), None, 200),
        call("POST", &p("/ban"), Some(json!({"value": "192.0.2.1"})), 409),
        call("GET", &p("/decisions?origin=lists&limit=2"), None, 200),
        call(
            "POST",
            &p("/unban"),
            Some(json!({"value": "10.0.0.1"})),
            200,
        ),
        call("GET", &p("/diagnostics/connectivity"), None, 200),
        call("GET", &p("/diagnostics/config"), None, 200),
    ];
    check_calls(&app, calls, &mut hit).await;
    app.stop().await;

    // Every route answered with success at least once (but those of the managed engine,
    // whose successes the engine tests check).
    for &(method, path, auth) in cerberus::admin::ROUTES {
        if path.starts_with("/hub/") || path.starts_with("/console/") || path.starts_with("/capi/")
        {
            continue;
        }
        let full = if auth {
            format!("{PREFIX}{path}")
        } else {
            path.to_string()
        };
        assert!(
            hit.contains(&(method.to_string(), full.clone())),
            "{method} {full} never succeeded"
        );
    }
}
