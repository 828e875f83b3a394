//! The hub index (`.index.json` of crowdsecurity/hub) parsed and checked: what each item
//! is, where its file goes, what a collection pulls in (resolved recursively, cycles
//! refused) and the sha256 digest of every version. No I/O.
//!
//! The format: for each item type (`collections`, `parsers`, `scenarios`,
//! `postoverflows`, `contexts`, `appsec-*`) a map from `author/name` to `path`, `stage`
//! (parsers and postoverflows), `version`, `versions` (`{ver: {digest, deprecated}}`),
//! `description`, `long_description` and `content` (both base64), and for collections
//! one list per item type of what they pull in.

use super::HubError;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Item types in the order a listing shows them and a bare name is resolved in: the
/// types cscli manages (crowdsec `pkg/cwhub/item.go`, `ItemTypes`), and no other. Each
/// names the directory of `config_dir` its items are linked into, so an index with any
/// other type (`notifications`, `acquis.d`, ...) is refused whole.
pub const TYPE_ORDER: &[&str] = &[
    "collections",
    "parsers",
    "scenarios",
    "postoverflows",
    "contexts",
    "appsec-configs",
    "appsec-rules",
];

/// One version of an item.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub digest: String,
    #[serde(default)]
    pub deprecated: bool,
}

#[derive(Debug, Deserialize)]
struct RawItem {
    path: String,
    #[serde(default)]
    stage: Option<String>,
    version: String,
    #[serde(default)]
    versions: BTreeMap<String, Version>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    long_description: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// One item of the index, checked: its `path` and `stage` are safe relative paths.
#[derive(Debug, Clone)]
pub struct Item {
    /// The item type: `collections`, `parsers`, ...
    pub kind: String,
    /// `author/name`.
    pub name: String,
    /// Where its file lives under the hub dir, e.g. `parsers/s01-parse/crowdsecurity/caddy-logs.yaml`.
    pub path: String,
    /// The parser or postoverflow stage (`s01-parse`); `None` for other types.
    pub stage: Option<String>,
    /// The current version.
    pub version: String,
    pub versions: BTreeMap<String, Version>,
    /// `description`, or the first line of `long_description` when it has none.
    pub description: String,
    /// Base64 of the item's file, when the index carries it.
    content: Option<String>,
    /// What a collection pulls in: (type, name), in the index's order.
    pub deps: Vec<(String, String)>,
}

impl Item {
    /// `type name`, as messages name an item.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// The file name cscli gives the link in the config dir: the last part of `path`.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The digest the index gives for the current version.
    pub fn expected_digest(&self) -> Option<&str> {
        self.versions.get(&self.version).map(|v| v.digest.as_str())
    }

    /// The version whose digest is `sha256_hex`, if any.
    pub fn version_of(&self, sha256_hex: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, v)| v.digest.eq_ignore_ascii_case(sha256_hex))
            .map(|(k, _)| k.as_str())
    }

    /// True when the index carries the file's content.
    pub fn has_content(&self) -> bool {
        self.content.is_some()
    }

    /// The item's file decoded from the index's `content`; `None` when the index has none.
    pub fn content(&self) -> Option<Result<Vec<u8>, HubError>> {
        let b64 = self.content.as_ref()?;
        let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(clean.as_bytes())
                .map_err(|e| HubError::MissingContent {
                    item: self.name.clone(),
                    kind: self.kind.clone(),
                    reason: format!("its `content` in the index is not valid base64: {e}"),
                }),
        )
    }

    /// Checks `bytes` against the digest of the current version.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), HubError> {
        let actual = sha256_hex(bytes);
        let expected = self
            .expected_digest()
            .ok_or_else(|| HubError::MissingContent {
                item: self.name.clone(),
                kind: self.kind.clone(),
                reason: format!(
                    "the index gives no digest for its version {} (versions: {})",
                    self.version,
                    self.versions.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
        if expected.eq_ignore_ascii_case(&actual) {
            Ok(())
        } else {
            Err(HubError::DigestMismatch {
                item: self.name.clone(),
                kind: self.kind.clone(),
                version: self.version.clone(),
                expected: expected.to_string(),
                actual,
            })
        }
    }

    fn matches(&self, needle_lower: &str) -> bool {
        self.name.to_lowercase().contains(needle_lower)
            || self.description.to_lowercase().contains(needle_lower)
    }
}

/// The sha256 of `bytes` in lowercase hex, as the index writes digests.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed index.
#[derive(Debug, Clone, Default)]
pub struct Index {
    items: BTreeMap<String, BTreeMap<String, Item>>,
    /// Items left out because they were malformed (each says why).
    pub skipped: Vec<String>,
}

impl Index {
    /// Parses and checks an index. An item whose path or stage would leave the hub dir,
    /// or that lacks a required field, is left out and named in [`Index::skipped`]; a
    /// document that is not an index at all, lists no item, or has an item type cscli
    /// does not manage (see [`TYPE_ORDER`]), is an error.
    pub fn parse(bytes: &[u8]) -> Result<Index, String> {
        let top: BTreeMap<String, serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JSON object of item types: {e}"))?;
        let unknown: Vec<&String> = top
            .keys()
            .filter(|k| !TYPE_ORDER.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "it has item type(s) {unknown:?} that cscli does not manage (only {}); \
                 their items would be linked into config_dir/<type>/, so the index is \
                 refused and nothing was written (a tampered or foreign index: check hub_url)",
                TYPE_ORDER.join(", ")
            ));
        }
        let mut index = Index::default();
        for (kind, value) in top {
            let serde_json::Value::Object(map) = value else {
                index
                    .skipped
                    .push(format!("{kind}: not a map of items, left out"));
                continue;
            };
            let mut items = BTreeMap::new();
            for (name, raw) in map {
                match serde_json::from_value::<RawItem>(raw) {
                    Ok(raw) => match Item::from_raw(&kind, &name, raw) {
                        Ok(item) => {
                            items.insert(name, item);
                        }
                        Err(why) => index.skipped.push(format!("{kind} {name}: {why}")),
                    },
                    Err(e) => index.skipped.push(format!("{kind} {name}: {e}")),
                }
            }
            index.items.insert(kind, items);
        }
        // Dependencies name types; keep only lists whose key is a type of this index.
        let kinds: Vec<String> = index.items.keys().cloned().collect();
        for items in index.items.values_mut() {
            for item in items.values_mut() {
                item.deps.retain(|(k, _)| kinds.contains(k));
            }
        }
        if index.is_empty() {
            return Err("it lists no item".into());
        }
        Ok(index)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item types of this index, in [`TYPE_ORDER`].
    pub fn kinds(&self) -> Vec<String> {
        TYPE_ORDER
            .iter()
            .filter(|k| self.items.contains_key(**k))
            .map(|k| k.to_string())
            .collect()
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&Item> {
        self.items.get(kind)?.get(name)
    }

    /// Every item, types in [`Index::kinds`] order, names sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Item> {
        self.kinds()
            .into_iter()
            .flat_map(move |k| self.items[&k].values())
    }

    /// The item type `given` names: an exact type of this index, or its singular
    /// (`collection`), case-insensitive.
    pub fn normalize_kind(&self, given: &str) -> Result<String, HubError> {
        let lower = given.trim().to_lowercase();
        for kind in self.kinds() {
            if kind == lower || kind.strip_suffix('s') == Some(lower.as_str()) {
                return Ok(kind);
            }
        }
        Err(HubError::UnknownType {
            given: given.to_string(),
            known: self.kinds(),
        })
    }

    /// Resolves `name` (optionally within `kind`). A name that several types have
    /// resolves to the first in [`TYPE_ORDER`]; the other types are returned so the
    /// caller can say so.
    pub fn resolve(
        &self,
        name: &str,
        kind: Option<&str>,
    ) -> Result<(&Item, Vec<String>), HubError> {
        if let Some(kind) = kind {
            let kind = self.normalize_kind(kind)?;
            return self
                .get(&kind, name)
                .map(|item| (item, Vec::new()))
                .ok_or_else(|| HubError::NotFound {
                    name: name.to_string(),
                    kind: Some(kind),
                });
        }
        let found: Vec<&Item> = self
            .kinds()
            .iter()
            .filter_map(|k| self.get(k, name))
            .collect();
        match found.split_first() {
            Some((first, rest)) => Ok((first, rest.iter().map(|i| i.kind.clone()).collect())),
            None => Err(HubError::NotFound {
                name: name.to_string(),
                kind: None,
            }),
        }
    }

    /// `root` and everything it pulls in, recursively, each once, dependencies before
    /// the collections that need them (`root` last). A collection that pulls itself in
    /// (directly or not) is a [`HubError::DependencyCycle`]; a dependency the index does
    /// not have is a [`HubError::MissingDependency`].
    pub fn closure<'a>(&'a self, root: &'a Item) -> Result<Vec<&'a Item>, HubError> {
        #[derive(PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            index: &'a Index,
            item: &'a Item,
            marks: &mut HashMap<(&'a str, &'a str), Mark>,
            stack: &mut Vec<&'a Item>,
            out: &mut Vec<&'a Item>,
        ) -> Result<(), HubError> {
            let key = (item.kind.as_str(), item.name.as_str());
            match marks.get(&key) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => {
                    let start = stack
                        .iter()
                        .position(|i| i.kind == item.kind && i.name == item.name)
                        .unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|i| i.name.clone()).collect();
                    cycle.push(item.name.clone());
                    return Err(HubError::DependencyCycle { cycle });
                }
                None => {}
            }
            marks.insert(key, Mark::Visiting);
            stack.push(item);
            for (dep_kind, dep_name) in &item.deps {
                let dep =
                    index
                        .get(dep_kind, dep_name)
                        .ok_or_else(|| HubError::MissingDependency {
                            item: item.name.clone(),
                            dep_kind: dep_kind.clone(),
                            dep: dep_name.clone(),
                        })?;
                visit(index, dep, marks, stack, out)?;
            }
            stack.pop();
            marks.insert(key, Mark::Done);
            out.push(item);
            Ok(())
        }
        let mut marks = HashMap::new();
        let mut stack = Vec::new();
        let mut out = Vec::new();
        visit(self, root, &mut marks, &mut stack, &mut out)?;
        Ok(out)
    }

    /// Items whose name or description contains `q` (case-insensitive), of type `kind`.
    pub fn search(&self, q: Option<&str>, kind: Option<&str>) -> Result<Vec<&Item>, HubError> {
        let kind = kind
            .filter(|k| !k.trim().is_empty())
            .map(|k| self.normalize_kind(k))
            .transpose()?;
        let needle = q.map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
        Ok(self
            .iter()
            .filter(|i| kind.as_deref().map_or(true, |k| i.kind == k))
            .filter(|i| needle.as_deref().map_or(true, |n| i.matches(n)))
            .collect())
    }
}

impl Item {
    fn from_raw(kind: &str, name: &str, raw: RawItem) -> Result<Item, String> {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err("empty or unprintable name".into());
        }
        check_rel_path(&raw.path).map_err(|why| format!("path {:?}: {why}", raw.path))?;
        let mut stage = raw.stage.filter(|s| !s.is_empty());
        if let Some(s) = &stage {
            if !safe_component(s) {
                return Err(format!("stage {s:?} is not a plain directory name"));
            }
        } else if kind == "parsers" || kind == "postoverflows" {
            // cscli takes the stage from the path: `parsers/<stage>/<author>/<file>`.
            let parts: Vec<&str> = raw.path.split('/').collect();
            if parts.len() == 4 {
                stage = Some(parts[1].to_string());
            } else {
                return Err(format!("no stage, and none in its path {:?}", raw.path));
            }
        }
        let description = raw
            .description
            .filter(|d| !d.trim().is_empty())
            .or_else(|| raw.long_description.as_deref().and_then(first_line_of_b64))
            .unwrap_or_default();
        let mut deps = Vec::new();
        // Only lists named after a type are dependencies (as cscli ranges over its item
        // types); other lists (`references`, `labels`) are metadata.
        let mut dep_kinds: Vec<&String> = raw
            .rest
            .keys()
            .filter(|k| TYPE_ORDER.contains(&k.as_str()))
            .collect();
        dep_kinds.sort_by_key(|k| TYPE_ORDER.iter().position(|t| t == k));
        for dep_kind in dep_kinds {
            if let serde_json::Value::Array(list) = &raw.rest[dep_kind] {
                for dep in list {
                    match dep.as_str() {
                        Some(d) => deps.push((dep_kind.clone(), d.to_string())),
                        None => return Err(format!("{dep_kind} lists a non-string entry {dep}")),
                    }
                }
            }
        }
        Ok(Item {
            kind: kind.to_string(),
            name: name.to_string(),
            path: raw.path,
            stage,
            version: raw.version,
            versions: raw.versions,
            description: description.trim().to_string(),
            content: raw.content,
            deps,
        })
    }
}

fn first_line_of_b64(b64: &str) -> Option<String> {
    let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// A plain path component: not empty, not `.` or `..`, no separator or control char.
pub(crate) fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\\')
        && !s.chars().any(char::is_control)
}

/// A relative path made only of plain components (so it stays inside its root).
pub(crate) fn check_rel_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    if path.starts_with('/') {
        return Err("absolute");
    }
    if path.split('/').all(safe_component) {
        Ok(())
    } else {
        Err("has an empty, `.`, `..` or unprintable component")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// An item with content `body` whose index digest is right.
    fn item(path: &str, body: &str) -> serde_json::Value {
        json!({
            "path": path, "version": "0.2",
            "versions": {"0.1": {"digest": sha256_hex(b"old"), "deprecated": false},
                         "0.2": {"digest": sha256_hex(body.as_bytes()), "deprecated": false}},
            "description": format!("the {path} item"), "content": b64(body), "author": "t",
        })
    }

    fn small() -> serde_json::Value {
        let mut top = json!({
            "parsers": {
                "t/p1": item("parsers/s01-parse/t/p1.yaml", "p1"),
                "t/p2": item("parsers/s02-enrich/t/p2.yaml", "p2"),
            },
            "scenarios": {
                "t/s1": item("scenarios/t/s1.yaml", "s1"),
                "t/s2": item("scenarios/t/s2.yaml", "s2"),
            },
            "collections": {
                "t/web": item("collections/t/web.yaml", "web"),
                "t/base": item("collections/t/base.yaml", "base"),
                "t/loop-a": item("collections/t/loop-a.yaml", "a"),
                "t/loop-b": item("collections/t/loop-b.yaml", "b"),
                "t/broken": item("collections/t/broken.yaml", "x"),
            },
        });
        let c = &mut top["collections"];
        c["t/web"]["parsers"] = json!(["t/p1"]);
        c["t/web"]["collections"] = json!(["t/base"]);
        c["t/web"]["scenarios"] = json!(["t/s1"]);
        c["t/base"]["parsers"] = json!(["t/p2"]);
        c["t/base"]["scenarios"] = json!(["t/s1", "t/s2"]);
        c["t/loop-a"]["collections"] = json!(["t/loop-b"]);
        c["t/loop-b"]["collections"] = json!(["t/loop-a"]);
        c["t/broken"]["scenarios"] = json!(["t/nowhere"]);
        top
    }

    fn parse(v: &serde_json::Value) -> Index {
        Index::parse(v.to_string().as_bytes()).expect("index parses")
    }

    fn names(items: &[&Item]) -> Vec<String> {
        items.iter().map(|i| i.name.clone()).collect()
    }

    #[test]
    fn only_the_types_cscli_manages_are_accepted() {
        for evil in ["notifications", "acquis.d", "..", "patterns"] {
            let mut v = small();
            v[evil] = json!({ "x/y": item(&format!("{evil}/x/y.yaml"), "a: 1") });
            let err = Index::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(
                err.contains(evil) && err.contains("cscli does not manage"),
                "{err}"
            );
        }
        // Lists that are not types (a scenario's references) are not dependencies.
        let mut v = small();
        v["collections"]["t/web"]["references"] = json!(["https://example.org"]);
        let index = parse(&v);
        let web = index.get("collections", "t/web").unwrap();
        assert!(web
            .deps
            .iter()
            .all(|(k, _)| TYPE_ORDER.contains(&k.as_str())));
    }

    #[test]
    fn closure_is_recursive_deduplicated_and_dependencies_first() {
        let index = parse(&small());
        let web = index.get("collections", "t/web").unwrap();
        let all = index.closure(web).unwrap();
        // Collections are walked first, then parsers, scenarios, ...; each after its needs.
        assert_eq!(
            names(&all),
            ["t/p2", "t/s1", "t/s2", "t/base", "t/p1", "t/web"]
        );
        // t/s1 is wanted by both collections: once.
        assert_eq!(all.iter().filter(|i| i.name == "t/s1").count(), 1);
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        let index = parse(&small());
        let a = index.get("collections", "t/loop-a").unwrap();
        match index.closure(a) {
            Err(HubError::DependencyCycle { cycle }) => {
                assert_eq!(cycle, ["t/loop-a", "t/loop-b", "t/loop-a"])
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_dependency_names_both_ends() {
        let index = parse(&small());
        let broken = index.get("collections", "t/broken").unwrap();
        let err = index.closure(broken).unwrap_err();
        assert!(matches!(err, HubError::MissingDependency { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("t/broken") && msg.contains("scenarios t/nowhere"),
            "{msg}"
        );
        assert_eq!(err.status(), 422);
    }

    #[test]
    fn digest_is_checked_against_the_current_version() {
        let mut v = small();
        let index = parse(&v);
        let p1 = index.get("parsers", "t/p1").unwrap();
        let body = p1.content().unwrap().unwrap();
        assert_eq!(body, b"p1");
        p1.verify(&body).unwrap();
        assert_eq!(p1.version_of(&sha256_hex(b"old")), Some("0.1"));

        // The index lies about the digest: refused, naming the item.
        v["parsers"]["t/p1"]["versions"]["0.2"]["digest"] = json!(sha256_hex(b"other"));
        let index = parse(&v);
        let p1 = index.get("parsers", "t/p1").unwrap();
        let err = p1.verify(&p1.content().unwrap().unwrap()).unwrap_err();
        assert!(
            matches!(err, HubError::DigestMismatch { ref item, .. } if item == "t/p1"),
            "{err:?}"
        );
        assert_eq!(err.status(), 502);

        // No digest at all for the current version: refused too.
        v["parsers"]["t/p1"]["version"] = json!("0.3");
        let index = parse(&v);
        let p1 = index.get("parsers", "t/p1").unwrap();
        let err = p1.verify(b"p1").unwrap_err();
        assert!(
            err.to_string().contains("no digest for its version 0.3"),
            "{err}"
        );
    }

    #[test]
    fn paths_that_leave_the_hub_dir_are_left_out() {
        let mut v = small();
        v["scenarios"]["t/evil"] = item("../../etc/passwd", "x");
        v["scenarios"]["t/abs"] = item("/etc/passwd", "x");
        v["parsers"]["t/badstage"] = item("parsers/s01-parse/t/b.yaml", "x");
        v["parsers"]["t/badstage"]["stage"] = json!("..");
        let index = parse(&v);
        assert!(index.get("scenarios", "t/evil").is_none());
        assert!(index.get("scenarios", "t/abs").is_none());
        assert!(index.get("parsers", "t/badstage").is_none());
        assert_eq!(index.skipped.len(), 3, "{:?}", index.skipped);
        assert!(index.get("scenarios", "t/s1").is_some());
    }

    #[test]
    fn stage_comes_from_the_path_when_missing() {
        let index = parse(&small());
        let p2 = index.get("parsers", "t/p2").unwrap();
        assert_eq!(p2.stage.as_deref(), Some("s02-enrich"));
        assert_eq!(p2.file_name(), "p2.yaml");
        assert_eq!(index.get("scenarios", "t/s1").unwrap().stage, None);
    }

    #[test]
    fn search_matches_name_or_description_case_insensitively_and_filters_type() {
        let mut v = small();
        v["collections"]["t/web"]["description"] = json!("Protects WEB servers");
        // No description: the first line of long_description stands in.
        v["collections"]["t/base"]
            .as_object_mut()
            .unwrap()
            .remove("description");
        v["collections"]["t/base"]["long_description"] =
            json!(b64("\n## Common HTTP scenarios\nmore"));
        let index = parse(&v);
        let hits = index.search(Some("servers"), None).unwrap();
        assert_eq!(names(&hits), ["t/web"]);
        let hits = index.search(Some("http SCENARIOS"), None).unwrap();
        assert_eq!(names(&hits), ["t/base"]);
        let hits = index.search(Some("p1"), Some("parser")).unwrap();
        assert_eq!(names(&hits), ["t/p1"]);
        let hits = index.search(None, Some("scenarios")).unwrap();
        assert_eq!(names(&hits), ["t/s1", "t/s2"]);
        let err = index.search(None, Some("widgets")).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string().contains("collections, parsers, scenarios"),
            "{err}"
        );
    }

    #[test]
    fn a_name_in_several_types_prefers_collections_and_says_so() {
        let mut v = small();
        v["parsers"]["t/web"] = item("parsers/s01-parse/t/web.yaml", "w");
        let index = parse(&v);
        let (item, others) = index.resolve("t/web", None).unwrap();
        assert_eq!(item.kind, "collections");
        assert_eq!(others, ["parsers"]);
        let (item, _) = index.resolve("t/web", Some("parser")).unwrap();
        assert_eq!(item.kind, "parsers");
        assert_eq!(index.resolve("t/none", None).unwrap_err().status(), 404);
    }

    #[test]
    fn not_an_index_is_an_error() {
        assert!(Index::parse(b"<html>").is_err());
        assert!(Index::parse(b"{}").unwrap_err().contains("no item"));
        assert!(Index::parse(b"[1]").is_err());
    }
}
