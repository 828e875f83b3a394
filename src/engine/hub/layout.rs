//! Where the engine keeps hub items, read from its own config, and what is installed
//! there now. The layout is cscli's (checked against cscli 1.4.6): the item's file at
//! `hub_dir/<index path>`, and an absolute symlink to it at
//! `config_dir/<type>/[<stage>/]<file name>` (`parsers/s01-parse/caddy-logs.yaml`,
//! `scenarios/http-probing.yaml`, `collections/caddy.yaml`); the index the items came from
//! at `config_paths.index_path` (`hub_dir/.index.json`).

use super::index::{sha256_hex, Item};
use super::HubError;
use serde::{Deserialize as _, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::io;
use std::path::{Path, PathBuf};

/// The engine's directories, as its config file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLayout {
    /// The engine's config file (`crowdsec -c FILE`).
    pub config_file: PathBuf,
    /// `config_paths.config_dir`: where the enabled items are linked.
    pub config_dir: PathBuf,
    /// `config_paths.hub_dir`: where the items' files live.
    pub hub_dir: PathBuf,
    /// `config_paths.index_path` (default `hub_dir/.index.json`): the index the
    /// installed items came from.
    pub index_path: PathBuf,
    /// `config_paths.data_dir`: where items' `data:` files are expected.
    pub data_dir: PathBuf,
    /// The engine binary whose `-t` validates a change.
    pub crowdsec_bin: PathBuf,
}

impl EngineLayout {
    /// Reads `config_paths` from the engine's YAML config, as crowdsec does: `$VAR` and
    /// `${VAR}` expanded from the environment, and `FILE.local` (when present) merged on
    /// top. `config_dir`, `hub_dir` and `data_dir` are required.
    pub fn from_engine_config(
        config_file: impl AsRef<Path>,
        crowdsec_bin: impl AsRef<Path>,
    ) -> Result<EngineLayout, HubError> {
        let config_file = config_file.as_ref();
        let problem = |reason: String| HubError::EngineConfig {
            path: config_file.display().to_string(),
            reason,
        };
        let mut root = read_yaml(config_file).map_err(problem)?;
        let mut local = config_file.as_os_str().to_owned();
        local.push(".local");
        let local = PathBuf::from(local);
        if local.exists() {
            let over = read_yaml(&local).map_err(|reason| HubError::EngineConfig {
                path: local.display().to_string(),
                reason,
            })?;
            merge(&mut root, over);
        }
        let paths = root
            .get("config_paths")
            .and_then(Value::as_mapping)
            .ok_or_else(|| problem("has no `config_paths` section".into()))?;
        let get = |key: &str| -> Option<PathBuf> {
            paths
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                // Absolute, as cscli makes its link targets (relative to our cwd, as
                // crowdsec resolves them against its own).
                .map(|s| std::path::absolute(s.trim()).unwrap_or_else(|_| PathBuf::from(s.trim())))
        };
        let need = |key: &str| {
            get(key).ok_or_else(|| {
                problem(format!(
                    "has no `config_paths.{key}`; set it to the engine's {key} (cscli needs it too)"
                ))
            })
        };
        let config_dir = need("config_dir")?;
        let hub_dir = need("hub_dir")?;
        let data_dir = need("data_dir")?;
        let index_path = get("index_path").unwrap_or_else(|| hub_dir.join(".index.json"));
        Ok(EngineLayout {
            config_file: config_file.to_path_buf(),
            config_dir,
            hub_dir,
            index_path,
            data_dir,
            crowdsec_bin: crowdsec_bin.as_ref().to_path_buf(),
        })
    }

    /// Where the item's file lives: `hub_dir/<path>`.
    pub fn hub_path(&self, item: &Item) -> PathBuf {
        self.hub_dir.join(&item.path)
    }

    /// Where cscli links the item: `config_dir/<type>/[<stage>/]<file name>`.
    pub fn link_path(&self, item: &Item) -> PathBuf {
        let mut p = self.config_dir.join(&item.kind);
        if let Some(stage) = &item.stage {
            p.push(stage);
        }
        p.push(item.file_name());
        p
    }

    /// What is at the item's places now. The hub file is hashed when the item is
    /// linked, or always with `always_hash`.
    pub fn local_state(&self, item: &Item, always_hash: bool) -> LocalState {
        let link = self.link_path(item);
        let hub = self.hub_path(item);
        let link_state = match std::fs::symlink_metadata(&link) {
            Err(_) => LinkState::Missing,
            Ok(meta) if meta.file_type().is_symlink() => {
                if points_to(&link, &hub) {
                    LinkState::Ours
                } else {
                    LinkState::Other(std::fs::read_link(&link).unwrap_or_default())
                }
            }
            Ok(_) => LinkState::LocalFile,
        };
        let hub_digest = if always_hash || link_state == LinkState::Ours {
            std::fs::read(&hub).ok().map(|bytes| sha256_hex(&bytes))
        } else {
            None
        };
        LocalState {
            link: link_state,
            hub_digest,
        }
    }
}

/// True when `link` is a symlink that leads to `target` (by its text, or both resolve to
/// the same file).
pub(crate) fn points_to(link: &Path, target: &Path) -> bool {
    match std::fs::read_link(link) {
        Ok(t) if t == target => true,
        Ok(_) => match (std::fs::canonicalize(link), std::fs::canonicalize(target)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        Err(_) => false,
    }
}

/// What occupies an item's link path in the config dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Missing,
    /// A symlink to this item's file in the hub dir: the item is enabled.
    Ours,
    /// A symlink elsewhere (another item with the same file name, or a stale link).
    Other(PathBuf),
    /// A regular file: a local item cscli does not manage.
    LocalFile,
}

/// An item's state on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub link: LinkState,
    /// sha256 of the item's file in the hub dir, when it exists.
    pub hub_digest: Option<String>,
}

impl LocalState {
    pub fn installed(&self) -> bool {
        self.link == LinkState::Ours
    }

    /// The version of `item` the hub file is, if it matches one.
    pub fn local_version<'a>(&self, item: &'a Item) -> Option<&'a str> {
        self.hub_digest.as_deref().and_then(|d| item.version_of(d))
    }

    /// Installed, with a file that matches no version of the index (edited locally).
    pub fn tainted(&self, item: &Item) -> bool {
        self.installed() && self.hub_digest.is_some() && self.local_version(item).is_none()
    }

    /// Installed and at the index's current version.
    pub fn up_to_date(&self, item: &Item) -> bool {
        self.installed()
            && match (self.hub_digest.as_deref(), item.expected_digest()) {
                (Some(have), Some(want)) => have.eq_ignore_ascii_case(want),
                _ => false,
            }
    }
}

/// A `data:` entry of an item: a file the engine reads from its data dir, which cscli
/// downloads from `source_url` at install time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataFile {
    /// The item that needs it.
    pub item: String,
    /// The file name in the engine's data dir.
    pub dest_file: String,
    pub source_url: Option<String>,
    /// Where the engine looks for it.
    pub path: PathBuf,
}

/// The `data:` entries of an item's YAML (every document of the file). Entries without
/// `dest_file`, or whose `dest_file` would leave the data dir, are returned as problems.
pub(crate) fn data_files(
    item: &Item,
    body: &[u8],
    data_dir: &Path,
) -> (Vec<DataFile>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_slice(body) {
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "{}: cannot read its YAML to find `data:` files: {e}",
                    item.label()
                ));
                break;
            }
        };
        let Some(entries) = value.get("data").and_then(Value::as_sequence) else {
            continue;
        };
        for entry in entries {
            let dest = entry.get("dest_file").and_then(Value::as_str);
            let source = entry
                .get("source_url")
                .and_then(Value::as_str)
                .map(str::to_string);
            match dest {
                Some(d) if super::index::check_rel_path(d).is_ok() => files.push(DataFile {
                    item: item.name.clone(),
                    dest_file: d.to_string(),
                    source_url: source,
                    path: data_dir.join(d),
                }),
                other => problems.push(format!(
                    "{}: `data:` entry with an unusable dest_file {other:?}",
                    item.label()
                )),
            }
        }
    }
    (files, problems)
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| describe_io(&e))?;
    let text = expand_env(&text, |k| std::env::var(k).ok());
    let value: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("is not valid YAML: {e}"))?;
    match value {
        Value::Mapping(_) => Ok(value),
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        _ => Err("is not a YAML mapping".into()),
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist".into(),
        io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".into(),
        _ => format!("cannot be read: {e}"),
    }
}

/// Merges `over` into `base`: maps key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Expands `$NAME` and `${NAME}` like Go's `os.ExpandEnv` (unset names become empty).
pub(crate) fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                out.push_str(&lookup(&inner[..end]).unwrap_or_default());
                rest = &inner[end + 1..];
                continue;
            }
            out.push('$');
            rest = after;
            continue;
        }
        let len = after
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(after.len(), |(i, _)| i);
        if len == 0 {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_expanded_like_go() {
        let lookup = |k: &str| match k {
            "HOME_DIR" => Some("/h".to_string()),
            _ => None,
        };
        assert_eq!(
            expand_env("a ${HOME_DIR}/x $HOME_DIR/y", lookup),
            "a /h/x /h/y"
        );
        assert_eq!(
            expand_env("$NOPE|${NOPE}|$|$ |cost: 5$", lookup),
            "||$|$ |cost: 5$"
        );
    }

    #[test]
    fn layout_reads_config_paths_with_local_override_and_default_index_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            "config_paths:\n  config_dir: /etc/cs/\n  hub_dir: /var/hub/\n  data_dir: /var/data/\n",
        )
        .unwrap();
        let layout = EngineLayout::from_engine_config(&cfg, "/usr/bin/crowdsec").unwrap();
        assert_eq!(layout.config_dir, PathBuf::from("/etc/cs/"));
        assert_eq!(layout.index_path, PathBuf::from("/var/hub/.index.json"));
        std::fs::write(
            dir.path().join("config.yaml.local"),
            "config_paths:\n  hub_dir: /other/hub\n  index_path: /other/idx.json\n",
        )
        .unwrap();
        let layout = EngineLayout::from_engine_config(&cfg, "/usr/bin/crowdsec").unwrap();
        assert_eq!(layout.hub_dir, PathBuf::from("/other/hub"));
        assert_eq!(layout.index_path, PathBuf::from("/other/idx.json"));
        assert_eq!(layout.config_dir, PathBuf::from("/etc/cs/"));
    }

    #[test]
    fn layout_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        let err = EngineLayout::from_engine_config(&cfg, "crowdsec").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::write(&cfg, "config_paths:\n  config_dir: /etc/cs/\n").unwrap();
        let err = EngineLayout::from_engine_config(&cfg, "crowdsec").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("config_paths.hub_dir") && msg.contains("config.yaml"),
            "{msg}"
        );
        assert_eq!(err.status(), 500);
    }
}
