//! Hub presets against a real CrowdSec engine config (the version under test: 1.4.6, or
//! 1.7.8 with `CERBERUS_CROWDSEC_VERSION=1.7.8`) and a loopback hub serving the real hub
//! indexes of `../shared/crowdsec-hub` (override with `CERBERUS_HUB_FIXTURES`).
//! Version-specific: today's index is refused (and rolled back) by 1.4.6 and accepted
//! by 1.7.8; on 1.7.8 the rollback is shown with an item broken on purpose.
//! Without them, the same tests run on a small index this file writes (said on stderr).
//!
//! Run: `cargo test --test engine_hub`.

mod support;

use base64::Engine as _;
use cerberus::engine::hub::{
    sha256_hex, EngineLayout, Hub, HubError, HubOptions, IndexSource, PresetRequest,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::engine::EngineDir;
use support::engine_env::HubServer;

// ---------------------------------------------------------------------------------------
// Fixtures: the real indexes, or our own small one.

/// What a test needs to know about the index pair it runs on.
struct Fixture {
    /// An index the 1.4.6 engine accepts.
    old: Vec<u8>,
    /// The same collection, in a version the 1.4.6 engine rejects.
    new: Vec<u8>,
    collection: &'static str,
    /// The item of `collection` the engine rejects in `new`.
    rejected: &'static str,
    /// A word of the engine's complaint about it.
    complaint_word: &'static str,
    /// A word of `search_hit`'s description (in another case than the index's).
    search_word: &'static str,
    search_hit: &'static str,
    /// Another collection that shares `shared` with `collection`.
    other: &'static str,
    shared: (&'static str, &'static str),
    /// Links the install must create, relative to the engine root.
    links: &'static [&'static str],
}

fn fixture() -> Fixture {
    let dir = std::env::var_os("CERBERUS_HUB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/crowdsec-hub"));
    match (
        std::fs::read(dir.join("index-2023-03-01.json")),
        std::fs::read(dir.join(".index.json")),
    ) {
        (Ok(old), Ok(new)) => Fixture {
            old,
            new,
            collection: "crowdsecurity/caddy",
            rejected: "crowdsecurity/caddy-logs",
            complaint_word: "UnmarshalJSON",
            search_word: "SPECIFIC",
            search_hit: "crowdsecurity/http-cve",
            other: "crowdsecurity/nginx",
            shared: ("collections", "crowdsecurity/base-http-scenarios"),
            links: &[
                "config/collections/caddy.yaml",
                "config/collections/base-http-scenarios.yaml",
                "config/parsers/s01-parse/caddy-logs.yaml",
                "config/parsers/s02-enrich/http-logs.yaml",
                "config/scenarios/http-probing.yaml",
                "config/scenarios/http-crawl-non_statics.yaml",
            ],
        },
        _ => {
            // Straight to stderr: libtest's capture would hide an eprintln! of a passing test.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "engine_hub: hub fixtures not found in {} (set CERBERUS_HUB_FIXTURES); \
                     running on the project's own small index instead",
                    dir.display()
                );
            });
            let (old, new) = own_indexes();
            Fixture {
                old,
                new,
                collection: "cerberus/mini",
                rejected: "cerberus/mini-logs",
                complaint_word: "UnmarshalJSON",
                search_word: "VULNERABILITIES",
                search_hit: "cerberus/mini-cve",
                other: "cerberus/mini-other",
                shared: ("collections", "cerberus/mini-http"),
                links: &[
                    "config/collections/mini.yaml",
                    "config/collections/mini-http.yaml",
                    "config/parsers/s01-parse/mini-logs.yaml",
                    "config/scenarios/mini-probing.yaml",
                ],
            }
        }
    }
}

const MINI_LOGS: &str = r#"name: cerberus/mini-logs
description: "Parse the access lines of the mini test service"
filter: "evt.Parsed.program == 'mini'"
onsuccess: next_stage
grok:
  pattern: '%{IP:remote_addr} %{WORD:verb} %{NOTSPACE:request} %{INT:status}'
  apply_on: message
statics:
  - meta: log_type
    value: http_access-log
  - meta: source_ip
    expression: evt.Parsed.remote_addr
  - meta: http_status
    expression: evt.Parsed.status
"#;

const MINI_PROBING: &str = r#"type: leaky
name: cerberus/mini-probing
description: "Detect a client probing many missing paths"
filter: "evt.Meta.log_type == 'http_access-log' && evt.Meta.http_status == '404'"
groupby: evt.Meta.source_ip
distinct: evt.Parsed.request
capacity: 10
leakspeed: 10s
blackhole: 5m
labels:
  type: scan
  remediation: true
"#;

const MINI_CVE_PROBE: &str = r#"type: trigger
name: cerberus/mini-cve-probe
description: "Detect requests for paths of known vulnerable software"
filter: "evt.Meta.log_type == 'http_access-log' && evt.Parsed.request in File('mini_cve_paths.txt')"
data:
  - source_url: https://example.invalid/mini_cve_paths.txt
    dest_file: mini_cve_paths.txt
    type: string
groupby: evt.Meta.source_ip
blackhole: 2m
labels:
  type: exploit
  remediation: true
"#;

/// Our own small index pair in the hub's format: `cerberus/mini` (a parser, and
/// `cerberus/mini-http` with a scenario and `cerberus/mini-cve`), `cerberus/mini-other`
/// sharing `cerberus/mini-http`. In the second index the parser uses a function the 1.4.6
/// engine does not know, and `mini-http` pulls in one more scenario.
fn own_indexes() -> (Vec<u8>, Vec<u8>) {
    fn item(path: &str, body: &str, version: &str, older: &[&str], description: &str) -> Value {
        let mut versions = serde_json::Map::new();
        for (i, o) in older.iter().enumerate() {
            versions.insert(
                format!("0.{}", i + 1),
                json!({"digest": sha256_hex(o.as_bytes()), "deprecated": false}),
            );
        }
        versions.insert(
            version.into(),
            json!({"digest": sha256_hex(body.as_bytes()), "deprecated": false}),
        );
        let mut v = json!({
            "path": path, "version": version, "versions": versions,
            "description": description, "author": "cerberus", "labels": null,
            "content": base64_encode(body.as_bytes()),
        });
        let parts: Vec<&str> = path.split('/').collect();
        if parts[0] == "parsers" {
            v["stage"] = json!(parts[1]);
        }
        v
    }
    let other_logs = MINI_LOGS
        .replace("cerberus/mini-logs", "cerberus/mini-other-logs")
        .replace("'mini'", "'other'");
    let collection = |deps: &Value| -> String { serde_yaml_ng::to_string(deps).unwrap() };
    let build = |new: bool| -> Vec<u8> {
        let logs_new = MINI_LOGS.replace(
            "filter: \"evt.Parsed.program == 'mini'\"",
            "filter: \"evt.Parsed.program == 'mini' && UnmarshalJSON(evt.Parsed.message, evt.Unmarshaled, 'mini') in ['', nil]\"",
        );
        let logs = if new {
            item(
                "parsers/s01-parse/cerberus/mini-logs.yaml",
                &logs_new,
                "0.2",
                &[MINI_LOGS],
                "Parse mini logs",
            )
        } else {
            item(
                "parsers/s01-parse/cerberus/mini-logs.yaml",
                MINI_LOGS,
                "0.1",
                &[],
                "Parse mini logs",
            )
        };
        let mut http_deps =
            json!({"scenarios": ["cerberus/mini-probing"], "collections": ["cerberus/mini-cve"]});
        if new {
            http_deps["scenarios"] =
                json!(["cerberus/mini-probing", "cerberus/mini-probing-strict"]);
        }
        let mini_deps =
            json!({"parsers": ["cerberus/mini-logs"], "collections": ["cerberus/mini-http"]});
        let other_deps =
            json!({"parsers": ["cerberus/mini-other-logs"], "collections": ["cerberus/mini-http"]});
        let cve_deps = json!({"scenarios": ["cerberus/mini-cve-probe"]});
        let with = |mut v: Value, deps: &Value| {
            for (k, list) in deps.as_object().unwrap() {
                v[k] = list.clone();
            }
            v
        };
        let http_body = collection(&http_deps);
        let mut top = json!({
            "parsers": {
                "cerberus/mini-logs": logs,
                "cerberus/mini-other-logs": item("parsers/s01-parse/cerberus/mini-other-logs.yaml", &other_logs, "0.1", &[], "Parse other logs"),
            },
            "scenarios": {
                "cerberus/mini-probing": item("scenarios/cerberus/mini-probing.yaml", MINI_PROBING, "0.1", &[], "Detect probing"),
                "cerberus/mini-cve-probe": item("scenarios/cerberus/mini-cve-probe.yaml", MINI_CVE_PROBE, "0.1", &[], "Detect known CVE paths"),
            },
            "postoverflows": {},
            "collections": {
                "cerberus/mini": with(item("collections/cerberus/mini.yaml", &collection(&mini_deps), "0.1", &[], "Mini service support: parser and http scenarios"), &mini_deps),
                "cerberus/mini-other": with(item("collections/cerberus/mini-other.yaml", &collection(&other_deps), "0.1", &[], "Other service support"), &other_deps),
                "cerberus/mini-http": with(item("collections/cerberus/mini-http.yaml", &http_body, "0.1", &[], "Generic http scenarios"), &http_deps),
                "cerberus/mini-cve": with(item("collections/cerberus/mini-cve.yaml", &collection(&cve_deps), "0.1", &[], "Detect exploitation of known web vulnerabilities"), &cve_deps),
            },
        });
        if new {
            let strict = MINI_PROBING
                .replace("cerberus/mini-probing", "cerberus/mini-probing-strict")
                .replace("capacity: 10", "capacity: 5");
            top["scenarios"]["cerberus/mini-probing-strict"] = item(
                "scenarios/cerberus/mini-probing-strict.yaml",
                &strict,
                "0.1",
                &[],
                "Detect probing, strictly",
            );
            // mini-http changed: a new version whose older one is the first index's.
            let old_body = collection(
                &json!({"scenarios": ["cerberus/mini-probing"], "collections": ["cerberus/mini-cve"]}),
            );
            top["collections"]["cerberus/mini-http"] = with(
                item(
                    "collections/cerberus/mini-http.yaml",
                    &http_body,
                    "0.2",
                    &[&old_body],
                    "Generic http scenarios",
                ),
                &http_deps,
            );
        }
        serde_json::to_vec_pretty(&top).unwrap()
    };
    (build(false), build(true))
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// A function no CrowdSec release knows: an expression that calls it fails to compile.
const NO_SUCH_FUNCTION: &str = "CerberusNoSuchFunction";

/// `index` with the current content of the parser `name` replaced by one that every engine
/// version refuses (its `filter:` calls [`NO_SUCH_FUNCTION`]), with a matching digest.
fn break_item(index: &[u8], kind: &str, name: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(index).unwrap();
    let item = &mut v[kind][name];
    assert_eq!(kind, "parsers", "break_item writes a parser");
    let broken = format!(
        "onsuccess: next_stage\nname: {name}\ndescription: \"broken on purpose by the tests\"\n\
         filter: \"{NO_SUCH_FUNCTION}(evt.Line.Raw) == true\"\n\
         grok:\n  pattern: '%{{IP:remote_addr}}'\n  apply_on: message\n"
    );
    let version = item["version"].as_str().unwrap().to_string();
    item["content"] = json!(base64_encode(broken.as_bytes()));
    item["versions"][&version]["digest"] = json!(sha256_hex(broken.as_bytes()));
    serde_json::to_vec(&v).unwrap()
}

/// `index` with `kind name`'s current digest replaced.
fn tamper_digest(index: &[u8], kind: &str, name: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(index).unwrap();
    let item = &mut v[kind][name];
    let version = item["version"].as_str().unwrap().to_string();
    item["versions"][&version]["digest"] = json!(sha256_hex(b"tampered"));
    serde_json::to_vec(&v).unwrap()
}

/// The type of `name` in `index` (first in the hub's order).
fn kind_of(index: &[u8], name: &str) -> String {
    let v: Value = serde_json::from_slice(index).unwrap();
    ["collections", "parsers", "scenarios", "postoverflows"]
        .into_iter()
        .find(|k| v[k].get(name).is_some())
        .unwrap_or_else(|| panic!("{name} is not in the index"))
        .to_string()
}

// ---------------------------------------------------------------------------------------
// A loopback hub.

/// A URL on a port nobody listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hub/.index.json")
}

// ---------------------------------------------------------------------------------------
// Helpers.

struct Setup {
    engine: EngineDir,
    hub: Hub,
    reloads: Arc<AtomicUsize>,
    cache: PathBuf,
}

fn setup(url: &str) -> Setup {
    let engine = EngineDir::new();
    let cache = engine.dir.path().join("cerberus-hub");
    let reloads = Arc::new(AtomicUsize::new(0));
    let hub = hub_for(&engine.layout(), url, &cache, &reloads);
    Setup {
        engine,
        hub,
        reloads,
        cache,
    }
}

fn hub_for(layout: &EngineLayout, url: &str, cache: &Path, reloads: &Arc<AtomicUsize>) -> Hub {
    let r = reloads.clone();
    let opts = HubOptions {
        reload: Some(Arc::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })),
        fetch_timeout: std::time::Duration::from_secs(10),
        ..HubOptions::default()
    };
    Hub::with_options(url, cache, layout.clone(), reqwest::Client::new(), opts).unwrap()
}

/// Every entry under `root`: kind, content digest or link target, mode, mtime (ns).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link->{}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else {
                format!("file:{}", sha256_hex(&std::fs::read(&p).unwrap()))
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} mtime={}.{:09}",
                    m.mode(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    let m = std::fs::metadata(root).unwrap();
    out.insert(
        ".".into(),
        format!("mtime={}.{:09}", m.mtime(), m.mtime_nsec()),
    );
    out
}

fn assert_same_tree(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    if before != after {
        let mut diff = Vec::new();
        for (k, v) in before {
            match after.get(k) {
                None => diff.push(format!("- {k} {v}")),
                Some(w) if w != v => diff.push(format!("~ {k}: {v} => {w}")),
                _ => {}
            }
        }
        for (k, v) in after {
            if !before.contains_key(k) {
                diff.push(format!("+ {k} {v}"));
            }
        }
        panic!("the engine's tree changed:\n{}", diff.join("\n"));
    }
}

/// `cscli -o json <kind> list` as (name -> status).
fn cscli_status(engine: &EngineDir, kind: &str) -> HashMap<String, (String, String)> {
    let out = engine.cscli(&["-o", "json", kind, "list"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("cscli said {out}: {e}"));
    v[kind]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                (
                    i["status"].as_str().unwrap_or("").to_string(),
                    i["local_version"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// The backup directories kept in the cache dir.
fn backups(cache: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("backups"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn version_in(index: &[u8], kind: &str, name: &str) -> String {
    let v: Value = serde_json::from_slice(index).unwrap();
    v[kind][name]["version"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// Counters, through a recorder installed once for this test binary.

#[derive(Default)]
struct Counts(Mutex<HashMap<String, Arc<std::sync::atomic::AtomicU64>>>);

struct CountCell(Arc<std::sync::atomic::AtomicU64>);

impl metrics::CounterFn for CountCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

struct CountingRecorder(&'static Counts);

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self.0 .0.lock().unwrap().entry(name).or_default().clone();
        metrics::Counter::from_arc(Arc::new(CountCell(cell)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The value of counter `name{labels}` (labels sorted, `k=v` joined by commas).
fn counter(name: &str) -> u64 {
    static COUNTS: std::sync::OnceLock<&'static Counts> = std::sync::OnceLock::new();
    let counts = COUNTS.get_or_init(|| {
        let counts: &'static Counts = Box::leak(Box::default());
        metrics::set_global_recorder(CountingRecorder(counts))
            .expect("one recorder per test binary");
        counts
    });
    counts
        .0
        .lock()
        .unwrap()
        .get(name)
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn install_writes_cscli_layout_engine_accepts_it_and_again_changes_nothing() {
    let fx = fixture();
    let server = HubServer::start(fx.old.clone()).await;
    let s = setup(&server.url);
    let layout = s.engine.layout();

    let report = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap();
    assert!(
        report.changed && report.validated && report.reloaded,
        "{report:?}"
    );
    assert_eq!(report.kind, "collections");
    assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
    let installed: Vec<&str> = report.installed.iter().map(|i| i.name.as_str()).collect();
    for name in [fx.collection, fx.rejected, fx.shared.1] {
        assert!(installed.contains(&name), "{name} not in {installed:?}");
    }
    assert!(report.index_updated);
    assert_eq!(
        std::fs::read(&layout.index_path).unwrap(),
        fx.old,
        ".index.json is the index used"
    );

    // Each link is an absolute symlink to the item's file under the hub dir, whose
    // sha256 is the index's digest.
    let index: Value = serde_json::from_slice(&fx.old).unwrap();
    for link in fx.links {
        let link = s.engine.root.join(link);
        let target =
            std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert!(
            target.is_absolute() && target.starts_with(&layout.hub_dir),
            "{}",
            target.display()
        );
        let rel = target
            .strip_prefix(&layout.hub_dir)
            .unwrap()
            .display()
            .to_string();
        let item = ["collections", "parsers", "scenarios"]
            .iter()
            .flat_map(|k| index[k].as_object().unwrap().values())
            .find(|i| i["path"] == rel.as_str())
            .unwrap_or_else(|| panic!("no item has path {rel}"));
        let digest = &item["versions"][item["version"].as_str().unwrap()]["digest"];
        assert_eq!(
            json!(sha256_hex(&std::fs::read(&target).unwrap())),
            *digest,
            "{rel}"
        );
    }
    // Data files are not downloaded: listed, with where they go.
    assert!(!report.data_files_missing.is_empty(), "{report:?}");
    for f in &report.data_files_missing {
        assert!(
            f.path.starts_with(&layout.data_dir) && !f.path.exists(),
            "{f:?}"
        );
    }
    assert!(
        report.warnings.iter().any(|w| w.contains("data file")),
        "{:?}",
        report.warnings
    );

    // The engine's own test passes, and cscli sees everything enabled at the index's version.
    let (ok, out) = s.engine.config_test();
    assert!(ok, "crowdsec -t refused the install:\n{out}");
    let collections = cscli_status(&s.engine, "collections");
    let parsers = cscli_status(&s.engine, "parsers");
    let kind = kind_of(&fx.old, fx.rejected);
    let want = (
        "enabled".to_string(),
        version_in(&fx.old, "collections", fx.collection),
    );
    assert_eq!(
        collections.get(fx.collection),
        Some(&want),
        "{collections:?}"
    );
    assert_eq!(
        parsers.get(fx.rejected).map(|s| s.0.as_str()),
        Some("enabled"),
        "{parsers:?}"
    );
    assert_eq!(
        parsers.get(fx.rejected).map(|s| s.1.clone()),
        Some(version_in(&fx.old, &kind, fx.rejected))
    );
    let hub_list = s.engine.cscli(&["hub", "list"]);
    assert!(
        hub_list.contains(fx.collection) && hub_list.contains(fx.rejected),
        "{hub_list}"
    );

    // The listing agrees.
    let list = s.hub.list(None, Some("collections")).await.unwrap();
    let mine = list
        .presets
        .iter()
        .find(|p| p.name == fx.collection)
        .unwrap();
    assert!(
        mine.installed && mine.up_to_date && !mine.tainted,
        "{mine:?}"
    );
    assert_eq!(list.index.source, IndexSource::Hub);

    // Again: nothing written (tree and mtimes identical), nothing reloaded.
    let before = tree(&s.engine.root);
    let again = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap();
    assert!(
        !again.changed && again.installed.is_empty() && again.updated.is_empty(),
        "{again:?}"
    );
    assert!(!again.index_updated && !again.validated && again.backup_dir.is_none());
    assert_eq!(again.unchanged.len(), report.installed.len());
    assert_same_tree(&before, &tree(&s.engine.root));
    assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tampered_digest_is_refused_before_anything_is_written() {
    let fx = fixture();
    let kind = kind_of(&fx.old, fx.rejected);
    let server = HubServer::start(tamper_digest(&fx.old, &kind, fx.rejected)).await;
    let s = setup(&server.url);
    let refused = "cerberus_hub_operations_total{op=install,outcome=digest_mismatch}";
    let refused_before = counter(refused);
    let before = tree(&s.engine.root);

    let err = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(err.item(), Some(fx.rejected));
    assert_eq!(err.status(), 502);
    let msg = err.to_string();
    assert!(
        msg.contains(fx.rejected) && msg.contains("nothing was written"),
        "{msg}"
    );
    assert!(err.body().nothing_changed);
    assert_same_tree(&before, &tree(&s.engine.root));
    assert_eq!(s.reloads.load(Ordering::SeqCst), 0);
    // >=: another test of this binary may be refused at the same time.
    assert!(counter(refused) > refused_before, "counted by outcome");
    assert!(
        server.requests.load(Ordering::SeqCst) >= 1,
        "the index was fetched"
    );
}

#[tokio::test]
async fn search_finds_an_item_by_a_word_of_its_description() {
    let fx = fixture();
    let server = HubServer::start(fx.old.clone()).await;
    let s = setup(&server.url);

    let list = s.hub.list(Some(fx.search_word), None).await.unwrap();
    let hit = list
        .presets
        .iter()
        .find(|p| p.name == fx.search_hit)
        .unwrap_or_else(|| {
            panic!(
                "{} not found by {:?}: {:?}",
                fx.search_hit, fx.search_word, list.presets
            )
        });
    assert_eq!(hit.kind, "collections");
    assert!(hit
        .description
        .to_lowercase()
        .contains(&fx.search_word.to_lowercase()));
    assert!(!hit.installed && !hit.up_to_date, "{hit:?}");
    // Every answer matches the query, in name or description.
    let w = fx.search_word.to_lowercase();
    for p in &list.presets {
        assert!(
            p.name.to_lowercase().contains(&w) || p.description.to_lowercase().contains(&w),
            "{p:?}"
        );
    }
    // The type filter applies, singular or plural.
    let parsers = s
        .hub
        .list(Some(fx.search_word), Some("parser"))
        .await
        .unwrap();
    assert!(parsers.presets.iter().all(|p| p.kind == "parsers"));
    let all = s.hub.list(None, Some("collections")).await.unwrap();
    let v: Value = serde_json::from_slice(&fx.old).unwrap();
    assert_eq!(
        all.presets.len(),
        v["collections"].as_object().unwrap().len()
    );
    assert_eq!(all.index.items, list.index.items);
    // A wrong type is a 400 that lists the right ones.
    let err = s.hub.list(None, Some("widgets")).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string()
            .contains("collections, parsers, scenarios, postoverflows"),
        "{err}"
    );
    // Within index_max_age the index is not fetched again.
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_update_the_engine_rejects_is_rolled_back_whole() {
    let fx = fixture();
    let server = HubServer::start(fx.old.clone()).await;
    let s = setup(&server.url);
    let first = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap();
    // The first install replaced the empty `{}` index: kept as a backup.
    let backup = first
        .backup_dir
        .clone()
        .expect("the replaced index was backed up");
    assert_eq!(std::fs::read(backup.join("index.json")).unwrap(), b"{}\n");
    let backups_before = backups(&s.cache);
    let before = tree(&s.engine.root);

    // 1.4.6 refuses the newer index as it is; 1.7.8 accepts it
    // (todays_collection_installs_on_1_7_8_and_is_rolled_back_on_1_4_6), so there the
    // newer index gets an item broken on purpose.
    let modern = support::lapi::version().is_modern();
    let (refused, complaint_word) = if modern {
        let kind = kind_of(&fx.new, fx.rejected);
        (break_item(&fx.new, &kind, fx.rejected), NO_SUCH_FUNCTION)
    } else {
        (fx.new.clone(), fx.complaint_word)
    };
    server.serve(refused);
    let err = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap_err();
    let HubError::ValidationFailed {
        item,
        complaint,
        already_failing,
    } = &err
    else {
        panic!("expected the engine to refuse, got {err:?}");
    };
    assert_eq!(item.as_deref(), Some(fx.rejected), "{complaint:?}");
    assert!(
        complaint.iter().any(|c| c.contains(complaint_word)),
        "{complaint:?}"
    );
    assert!(!already_failing);
    assert_eq!(err.status(), 422);
    let msg = err.to_string();
    assert!(
        msg.contains(fx.rejected) && msg.contains(complaint_word) && msg.contains("rolled back"),
        "{msg}"
    );
    let body = err.body();
    assert!(body.nothing_changed && !body.engine_output.is_empty());

    // Identical: files, links, directories, modes and mtimes; the old .index.json back.
    assert_same_tree(&before, &tree(&s.engine.root));
    assert_eq!(std::fs::read(s.engine.layout().index_path).unwrap(), fx.old);
    assert_eq!(
        backups(&s.cache),
        backups_before,
        "a rolled back change keeps no backup"
    );
    assert_eq!(
        s.reloads.load(Ordering::SeqCst),
        1,
        "no reload after a refused change"
    );
    let (ok, out) = s.engine.config_test();
    assert!(ok, "{out}");

    // The listing sees the update waiting.
    let list = s
        .hub
        .list(Some(fx.collection), Some("collections"))
        .await
        .unwrap();
    let mine = list
        .presets
        .iter()
        .find(|p| p.name == fx.collection)
        .unwrap();
    assert!(mine.installed, "{mine:?}");
}

/// Version-specific, both sides: today's index (the newer one) installed over nothing.
/// CrowdSec 1.7.8 takes today's collection and passes `crowdsec -t`; 1.4.6 refuses it
/// and the install is rolled back.
#[tokio::test]
async fn todays_collection_installs_on_1_7_8_and_is_rolled_back_on_1_4_6() {
    let fx = fixture();
    let server = HubServer::start(fx.new.clone()).await;
    let s = setup(&server.url);
    let before = tree(&s.engine.root);
    let result = s.hub.install(&PresetRequest::new(fx.collection)).await;
    if support::lapi::version().is_modern() {
        let done =
            result.unwrap_or_else(|e| panic!("1.7.8 refused today's {}: {e}", fx.collection));
        assert!(done.backup_dir.is_some(), "{done:?}");
        let (ok, out) = s.engine.config_test();
        assert!(ok, "crowdsec -t on 1.7.8: {out}");
        for link in fx.links {
            assert!(s.engine.root.join(link).exists(), "{link} missing");
        }
        assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
    } else {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, HubError::ValidationFailed { item, .. } if item.as_deref() == Some(fx.rejected)),
            "{err:?}"
        );
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert_same_tree(&before, &tree(&s.engine.root));
        assert_eq!(s.reloads.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn an_unreachable_hub_changes_nothing_and_says_why() {
    let fx = fixture();
    let url = closed_url().await;
    let s = setup(&url);
    let before = tree(&s.engine.root);
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let err = s
        .hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.status(), 502);
    let msg = err.to_string();
    assert!(
        msg.contains(&host) && msg.to_lowercase().contains("refused"),
        "{msg}"
    );
    assert_same_tree(&before, &tree(&s.engine.root));
    // Nothing cached: a listing fails the same way.
    let err = s.hub.list(None, None).await.unwrap_err();
    assert!(err.to_string().contains(&host), "{err}");

    // With a cached index, a listing answers from it and says why.
    let server = HubServer::start(fx.old.clone()).await;
    let live = hub_for(&s.engine.layout(), &server.url, &s.cache, &s.reloads);
    live.refresh().await.unwrap();
    let list = s.hub.list(Some(fx.search_word), None).await.unwrap();
    assert_eq!(list.index.source, IndexSource::Cache);
    let warning = list.index.warning.unwrap();
    assert!(
        warning.contains(&host) && warning.contains("cached index"),
        "{warning}"
    );
    assert!(list.presets.iter().any(|p| p.name == fx.search_hit));
    // Install does not fall back to the cache.
    assert!(matches!(
        s.hub.install(&PresetRequest::new(fx.collection)).await,
        Err(HubError::Unreachable { .. })
    ));
    assert_same_tree(&before, &tree(&s.engine.root));
}

#[tokio::test]
async fn remove_keeps_what_another_collection_needs() {
    let fx = fixture();
    let server = HubServer::start(fx.old.clone()).await;
    let s = setup(&server.url);
    s.hub
        .install(&PresetRequest::new(fx.collection))
        .await
        .unwrap();
    s.hub.install(&PresetRequest::new(fx.other)).await.unwrap();
    let layout = s.engine.layout();
    let reloads = s.reloads.load(Ordering::SeqCst);

    // A shared member cannot go on its own.
    let err = s
        .hub
        .remove(&PresetRequest::new(fx.shared.1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    assert!(err.to_string().contains(fx.other), "{err}");

    let report = s
        .hub
        .remove(&PresetRequest::new(fx.collection))
        .await
        .unwrap();
    assert!(report.validated && report.reloaded, "{report:?}");
    let removed: Vec<&str> = report.removed.iter().map(|r| r.name.as_str()).collect();
    assert!(
        removed.contains(&fx.collection) && removed.contains(&fx.rejected),
        "{removed:?}"
    );
    let kept = report
        .kept
        .iter()
        .find(|k| k.name == fx.shared.1)
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(kept.needed_by, [fx.other]);
    assert!(!removed.contains(&fx.shared.1));
    assert!(
        !s.engine.root.join(fx.links[0]).exists(),
        "the collection's link is gone"
    );
    assert!(
        std::fs::symlink_metadata(s.engine.root.join(fx.links[1])).is_ok(),
        "the shared link stays"
    );
    assert_eq!(s.reloads.load(Ordering::SeqCst), reloads + 1);
    let (ok, out) = s.engine.config_test();
    assert!(ok, "{out}");
    let collections = cscli_status(&s.engine, "collections");
    assert!(
        !collections.contains_key(fx.collection) && collections.contains_key(fx.other),
        "{collections:?}"
    );
    let list = s.hub.list(None, Some("collections")).await.unwrap();
    assert!(
        !list
            .presets
            .iter()
            .find(|p| p.name == fx.collection)
            .unwrap()
            .installed
    );
    let _ = layout;

    // Removing it again: a 404 that says so.
    let err = s
        .hub
        .remove(&PresetRequest::new(fx.collection))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotInstalled { .. }), "{err:?}");
    assert_eq!(err.status(), 404);
    assert!(err.to_string().contains("not installed"), "{err}");
}

#[tokio::test]
async fn items_without_content_are_fetched_next_to_the_index_and_checked() {
    // Our own index, with `content` stripped, and the files served at their paths.
    let (old, _) = own_indexes();
    let mut v: Value = serde_json::from_slice(&old).unwrap();
    let mut files = HashMap::new();
    for kind in ["collections", "parsers", "scenarios"] {
        for item in v[kind].as_object_mut().unwrap().values_mut() {
            let obj = item.as_object_mut().unwrap();
            let content = obj.remove("content").unwrap();
            let body = decode_b64(content.as_str().unwrap());
            files.insert(obj["path"].as_str().unwrap().to_string(), body);
        }
    }
    let stripped = serde_json::to_vec(&v).unwrap();
    let server = HubServer::start(stripped).await;
    *server.files.lock().unwrap() = files.clone();
    let s = setup(&server.url);

    // A file that does not match its digest is refused.
    let path = "parsers/s01-parse/cerberus/mini-logs.yaml";
    server
        .files
        .lock()
        .unwrap()
        .insert(path.into(), b"filter: tampered\n".to_vec());
    let before = tree(&s.engine.root);
    let err = s
        .hub
        .install(&PresetRequest::new("cerberus/mini"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::DigestMismatch { ref item, .. } if item == "cerberus/mini-logs"),
        "{err:?}"
    );
    assert_same_tree(&before, &tree(&s.engine.root));

    server
        .files
        .lock()
        .unwrap()
        .insert(path.into(), files[path].clone());
    let report = s
        .hub
        .install(&PresetRequest::new("cerberus/mini"))
        .await
        .unwrap();
    assert!(report.changed && report.validated, "{report:?}");
    assert_eq!(
        std::fs::read(s.engine.layout().hub_dir.join(path)).unwrap(),
        files[path]
    );
    let missing: Vec<&str> = report
        .data_files_missing
        .iter()
        .map(|f| f.dest_file.as_str())
        .collect();
    assert_eq!(missing, ["mini_cve_paths.txt"]);
}

#[tokio::test]
async fn bad_requests_are_named() {
    let fx = fixture();
    let server = HubServer::start(fx.old.clone()).await;
    let s = setup(&server.url);
    let err = s.hub.install(&PresetRequest::new("  ")).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("\"name\" is empty"), "{err}");
    let err = s
        .hub
        .install(&PresetRequest::new("nobody/nothing"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    assert!(err.to_string().contains("nobody/nothing"), "{err}");
    let err = s
        .hub
        .remove(&PresetRequest::new(fx.collection))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    let body = serde_json::to_value(err.body()).unwrap();
    assert_eq!(body["kind"], "not_installed");
    assert!(Hub::new(
        "not a url",
        &s.cache,
        s.engine.layout(),
        reqwest::Client::new()
    )
    .is_err());
}
