//! The one-way flow LAPI -> store -> snapshot -> doors, checked on the source: nothing
//! under `src/store/` or `src/serve/` names `crate::lapi` (the LAPI client, the sync
//! loop, the usage pusher `lapi::usage`), and the leaves `src/usage.rs` and
//! `src/ready.rs` name nothing of the crate at all.
//!
//! The scan drops comments, string and char literals, then reads paths token by token,
//! so `use crate::lapi::..`, `crate::lapi::x::y()` in code, `crate::{store, lapi::X}`
//! and `super::super::lapi` (any `super` chain that climbs to the crate root) are seen.

use std::path::{Path, PathBuf};

/// Code without comments, strings and char literals (each replaced by a space).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            out.push(' ');
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_ident(&b, i) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former
            // closes with a quote within a few characters.
            let close = if next == Some('\\') {
                (i + 2..(i + 12).min(b.len())).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    i = k + 1;
                    out.push(' ');
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Identifiers and the punctuation paths are made of (`::`, `{`, `}`, `,`).
fn tokens(code: &str) -> Vec<String> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if "{},".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The first segments named right under the crate root: after `crate::` (or a `super`
/// chain that climbs to the root from where it stands: the file's module depth plus the
/// inline `mod x { .. }` blocks around it), a name or each top-level name of a `{..}`
/// group.
fn root_names(src: &str, depth: usize) -> Vec<String> {
    let t = tokens(&strip(src));
    let mut found = Vec::new();
    let mut braces = 0usize;
    // Brace depth at which each enclosing inline module opened.
    let mut mods: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "{" => braces += 1,
            "}" => {
                if mods.last() == Some(&braces) {
                    mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            "mod" if t.get(i + 2).map(String::as_str) == Some("{") => mods.push(braces + 1),
            _ => {}
        }
        let mut j = i;
        let at_root = if t[i] == "crate" && t.get(i + 1).map(String::as_str) == Some("::") {
            j = i + 2;
            true
        } else if t[i] == "super" && (i == 0 || t[i - 1] != "::") {
            let mut supers = 0;
            while t.get(j).map(String::as_str) == Some("super")
                && t.get(j + 1).map(String::as_str) == Some("::")
            {
                supers += 1;
                j += 2;
            }
            supers >= depth + mods.len()
        } else {
            false
        };
        if at_root {
            collect(&t, j, &mut found);
        }
        i = if j > i { j } else { i + 1 };
    }
    found
}

/// The name at `t[j]`, or the top-level names of the group opening there.
fn collect(t: &[String], j: usize, found: &mut Vec<String>) {
    match t.get(j).map(String::as_str) {
        Some("{") => {
            let mut depth = 0;
            let mut expect_name = true;
            for tok in &t[j..] {
                match tok.as_str() {
                    "{" => {
                        depth += 1;
                        if depth == 1 {
                            expect_name = true;
                            continue;
                        }
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => {
                        expect_name = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && expect_name && tok != "{" && tok != "}" {
                    found.push(tok.clone());
                }
                expect_name = false;
            }
        }
        Some(name) => found.push(name.to_string()),
        None => {}
    }
}

/// Module depth of a file under `src/`: `serve/mod.rs` is 1, `serve/socket.rs` 2.
fn depth(rel: &Path) -> usize {
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every (file, root name) under `src/<dir>` whose root name is in `banned`.
fn offences(dir: &str, banned: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let base = src.join(dir);
    if base.is_dir() {
        rust_files(&base, &mut files);
    } else {
        files.push(base.with_extension("rs"));
    }
    assert!(!files.is_empty(), "no Rust files under src/{dir}");
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(&src).unwrap();
        for name in root_names(&text, depth(rel)) {
            if banned.is_empty() || banned.contains(&name.as_str()) {
                bad.push(format!("src/{}: crate::{name}", rel.display()));
            }
        }
    }
    bad
}

#[test]
fn store_and_doors_import_nothing_from_lapi() {
    for dir in ["store", "serve"] {
        let bad = offences(dir, &["lapi"]);
        assert!(
            bad.is_empty(),
            "data flows LAPI -> store -> doors; these name the LAPI side:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn usage_counters_and_readiness_are_leaves() {
    for file in ["usage", "ready"] {
        let bad = offences(file, &[]);
        assert!(
            bad.is_empty(),
            "a leaf names the crate:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn the_scan_sees_every_form_of_the_path() {
    let caught = |src: &str, depth: usize| root_names(src, depth).contains(&"lapi".to_string());
    assert!(caught("use crate::lapi::sync::SyncStats;", 1));
    assert!(caught("fn f() { let s = crate::lapi::x::y(); }", 2));
    assert!(caught("let s = crate :: lapi :: x;", 2));
    assert!(caught("use crate::{store::Decider, lapi::LapiClient};", 2));
    assert!(caught("use crate::{\n    lapi,\n    store,\n};", 2));
    assert!(caught("use super::super::lapi::sync;", 2));
    assert!(caught("use super::lapi;", 1));
    assert!(caught("mod t { use super::super::super::lapi; }", 2));
    // Not the crate's lapi: a sibling module, a longer name, comments and strings.
    assert!(!caught("use super::lapi;", 2));
    assert!(!caught("mod tests { use super::super::lapi; }", 2));
    assert!(caught(
        "mod a { mod b { } use super::super::super::lapi; }",
        2
    ));
    assert!(!caught("use crate::lapis::x;", 1));
    assert!(!caught("use crate::store::lapi;", 1));
    assert!(!caught(
        "// use crate::lapi::sync;\n/* crate::lapi */ fn f() {}",
        1
    ));
    assert!(!caught(
        r#"let s = "crate::lapi::x"; let c = '"'; let r = r"crate::lapi";"#,
        1
    ));
    assert!(!caught(
        "fn f<'a>(x: &'a str) -> &'a str { x } // crate::lapi",
        1
    ));
    // Lifetimes do not swallow the code after them.
    assert!(caught("fn f<'a>(x: &'a str) { crate::lapi::g(x) }", 1));
}
