//! Reads typed values (strings, lists, booleans, durations, paths, secrets) out of the
//! flattened YAML mapping, collecting a [`Problem`] per bad value instead of stopping.

use super::Problem;
use crate::duration::parse_config_duration;
use serde_yaml_ng::{Mapping, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Reads typed values out of the mapping, collecting every problem.
pub(super) struct Reader {
    pub(super) map: Mapping,
    pub(super) problems: Vec<Problem>,
    pub(super) secret_files: Vec<(String, PathBuf)>,
}

impl Reader {
    pub(super) fn new(map: Mapping) -> Reader {
        Reader {
            map,
            problems: Vec::new(),
            secret_files: Vec::new(),
        }
    }

    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
        match self.raw(key)?.clone() {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.problem(key, "expected a single value (a string)");
                None
            }
        }
    }

    pub(super) fn list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.raw(key)?.clone() {
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        Value::Number(n) => out.push(n.to_string()),
                        _ => {
                            self.problem(key, "expected a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Value::String(s) => Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
            _ => {
                self.problem(key, "expected a list of strings");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.raw(key)?.clone() {
            Value::Bool(b) => Some(b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Some(true),
                "false" | "no" | "0" | "off" => Some(false),
                _ => {
                    self.problem(key, format!("expected true or false, got {s:?}"));
                    None
                }
            },
            _ => {
                self.problem(key, "expected true or false");
                None
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str) -> Option<Duration> {
        let text = self.string(key)?;
        match parse_config_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(key, format!("{text:?} must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.string(key).map(PathBuf::from)
    }

    /// A secret given inline or as `KEY_file`; both at once is a problem.
    pub(super) fn secret(&mut self, key: &str) -> Option<String> {
        let file_key = format!("{key}_file");
        let inline = self.string(key);
        let file = self.path(&file_key);
        if let Some(p) = &file {
            self.secret_files.push((file_key.clone(), p.clone()));
        }
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if text.trim().is_empty() => {
                    self.problem(&file_key, format!("{} is empty", path.display()));
                    None
                }
                Ok(text) => Some(text.trim().to_string()),
                Err(e) => {
                    self.problem(&file_key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }

    pub(super) fn readable_file(&mut self, key: &str, path: &Option<PathBuf>) {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                self.problem(key, format!("cannot read {}: {e}", p.display()));
            }
        }
    }
}

/// Close enough to be a typo: at most two edits apart (case and `-` ignored).
pub(super) fn similar(known: &str, given: &str) -> bool {
    let given: Vec<char> = given
        .to_ascii_lowercase()
        .replace('-', "_")
        .chars()
        .collect();
    let known: Vec<char> = known.chars().collect();
    let mut prev: Vec<usize> = (0..=given.len()).collect();
    for (i, k) in known.iter().enumerate() {
        let mut cur = vec![i + 1; given.len() + 1];
        for (j, g) in given.iter().enumerate() {
            let cost = usize::from(k != g);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[given.len()] <= 2
}

/// `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
