//! The file steps of one change, planned before the first write and applied in a
//! transaction: item files written under `hub_dir` and linked in `config_dir` (install),
//! links and unshared files removed (remove); a failed step rolls back what was done.

use super::txn::Txn;
use super::{
    check, io_error, layout, undo, EngineLayout, HubError, Index, InstallReport, Item, ItemRef,
    ItemUpdate, KeptItem, LinkState, Loaded, RemoveReport,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One planned change.
enum Action {
    WriteHubFile { item: usize },
    Link { item: usize },
}

/// Plans and applies an install of `closure` (with `bodies`, checked): conflicts are
/// found before the first write; a failed write rolls back what was done.
pub(super) fn apply_install(
    layout: &EngineLayout,
    loaded: &Loaded,
    closure: &[(String, String)],
    bodies: &[Vec<u8>],
    backup_dir: PathBuf,
) -> Result<(Txn, InstallReport), HubError> {
    let mut report = InstallReport {
        name: String::new(),
        kind: String::new(),
        changed: false,
        installed: Vec::new(),
        updated: Vec::new(),
        unchanged: Vec::new(),
        index_updated: false,
        data_files_missing: Vec::new(),
        warnings: Vec::new(),
        backup_dir: None,
        validated: false,
        reloaded: false,
    };
    let items: Vec<&Item> = closure
        .iter()
        .map(|(k, n)| {
            loaded
                .index
                .get(k, n)
                .ok_or_else(|| HubError::Internal(format!("{k} {n} left the index")))
        })
        .collect::<Result<_, _>>()?;
    let mut actions = Vec::new();
    let mut seen_data = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let state = layout.local_state(item, true);
        let link = layout.link_path(item);
        let hub = layout.hub_path(item);
        let r = ItemRef {
            name: item.name.clone(),
            kind: item.kind.clone(),
            version: item.version.clone(),
        };
        let mut write = false;
        match state.hub_digest.as_deref() {
            None => write = true,
            Some(d) if Some(d) == item.expected_digest() => {}
            Some(d) => match item.version_of(d) {
                Some(old) => {
                    write = true;
                    if state.installed() {
                        report.updated.push(ItemUpdate {
                            name: item.name.clone(),
                            kind: item.kind.clone(),
                            from: Some(old.to_string()),
                            to: item.version.clone(),
                        });
                    }
                }
                None => report.warnings.push(format!(
                    "{} kept as it is: {} was modified locally (it matches no version of the index), so it was not replaced by version {}",
                    item.label(),
                    hub.display(),
                    item.version
                )),
            },
        }
        match &state.link {
            LinkState::Ours => {
                if !write {
                    report.unchanged.push(r);
                }
            }
            LinkState::Missing => {
                actions.push(Action::Link { item: i });
                report.installed.push(r);
            }
            LinkState::Other(target) => {
                return Err(HubError::Conflict {
                    item: item.name.clone(),
                    reason: format!(
                        "{} already links to {}, not to {}: another item with the same file name is enabled; remove it first",
                        link.display(),
                        target.display(),
                        hub.display()
                    ),
                })
            }
            LinkState::LocalFile => {
                return Err(HubError::Conflict {
                    item: item.name.clone(),
                    reason: format!(
                        "{} is a local file, not a link to the hub; move it away to install {} from the hub",
                        link.display(),
                        item.label()
                    ),
                })
            }
        }
        if write {
            actions.push(Action::WriteHubFile { item: i });
        }
        let (files, problems) = layout::data_files(item, &bodies[i], &layout.data_dir);
        report.warnings.extend(problems);
        for f in files {
            if !f.path.exists() && seen_data.insert(f.dest_file.clone()) {
                report.data_files_missing.push(f);
            }
        }
    }
    if !report.data_files_missing.is_empty() {
        report.warnings.push(format!(
            "{} data file(s) were not downloaded (see data_files_missing): the engine logs an error for each and runs the rest; put them in {} to enable those checks",
            report.data_files_missing.len(),
            layout.data_dir.display()
        ));
    }
    let index_same = std::fs::read(&layout.index_path)
        .map(|b| b == loaded.raw.as_ref())
        .unwrap_or(false);

    let mut txn = Txn::new(backup_dir);
    // Files first, links after, the index last: a link never points at nothing.
    actions.sort_by_key(|a| matches!(a, Action::Link { .. }));
    for action in &actions {
        let done = match *action {
            Action::WriteHubFile { item } => {
                let it = items[item];
                txn.write_file(
                    &layout.hub_path(it),
                    &bodies[item],
                    &Path::new("hub").join(&it.path),
                )
            }
            Action::Link { item } => {
                let it = items[item];
                txn.symlink(&layout.link_path(it), &layout.hub_path(it))
            }
        };
        if let Err(e) = done {
            return Err(undo(txn, io_error(e)));
        }
    }
    if !index_same {
        if let Err(e) = txn.write_file(&layout.index_path, &loaded.raw, Path::new("index.json")) {
            return Err(undo(txn, io_error(e)));
        }
        report.index_updated = true;
    }
    report.changed = !txn.is_empty();
    Ok((txn, report))
}

/// Plans and applies a removal: unlinks the item, and for a collection the members no
/// other installed collection needs.
pub(super) fn apply_remove(
    layout: &EngineLayout,
    index: &Index,
    name: &str,
    kind: Option<&str>,
    backup_dir: PathBuf,
) -> Result<(Txn, RemoveReport, Vec<check::Candidate>), HubError> {
    let installed: BTreeSet<(String, String)> = index
        .iter()
        .filter(|i| layout.local_state(i, false).installed())
        .map(|i| (i.kind.clone(), i.name.clone()))
        .collect();
    let is_installed = |i: &Item| installed.contains(&(i.kind.clone(), i.name.clone()));
    // The target: of the right type if given; else the installed one, collections first.
    let target = match kind {
        Some(k) => {
            let k = index.normalize_kind(k)?;
            index.get(&k, name).ok_or_else(|| HubError::NotFound {
                name: name.to_string(),
                kind: Some(k.clone()),
            })?
        }
        None => {
            let all: Vec<&Item> = index
                .kinds()
                .iter()
                .filter_map(|k| index.get(k, name))
                .collect();
            match all
                .iter()
                .find(|i| is_installed(i))
                .or(all.first())
                .copied()
            {
                Some(i) => i,
                None => {
                    return Err(HubError::NotInstalled {
                        name: name.to_string(),
                        kind: "item".into(),
                        hint: Some(format!(
                            "the engine's index {} does not list it",
                            layout.index_path.display()
                        )),
                    })
                }
            }
        }
    };
    if !is_installed(target) {
        let hint = match layout.local_state(target, false).link {
            LinkState::LocalFile => Some(format!(
                "{} is a local file, not managed by the hub; delete it by hand",
                layout.link_path(target).display()
            )),
            LinkState::Other(t) => Some(format!(
                "{} links to {}, another item's file",
                layout.link_path(target).display(),
                t.display()
            )),
            _ => None,
        };
        return Err(HubError::NotInstalled {
            name: target.name.clone(),
            kind: target.kind.clone(),
            hint,
        });
    }
    let key = |i: &Item| (i.kind.clone(), i.name.clone());
    let mut warnings = Vec::new();
    let installed_collections: Vec<&Item> = index
        .iter()
        .filter(|i| i.kind == "collections" && is_installed(i) && key(i) != key(target))
        .collect();
    // What each other installed collection pulls in.
    let mut needed_by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let target_closure: Vec<&Item> = index.closure(target)?;
    let inside: BTreeSet<(String, String)> = target_closure.iter().map(|i| key(i)).collect();
    for c in &installed_collections {
        match index.closure(c) {
            Ok(members) => {
                for m in members {
                    if key(m) != key(c) {
                        needed_by.entry(key(m)).or_default().push(c.name.clone());
                    }
                }
            }
            Err(e) => warnings.push(format!("cannot tell what {} needs: {e}", c.name)),
        }
    }
    if let Some(users) = needed_by.get(&key(target)) {
        return Err(HubError::Conflict {
            item: target.name.clone(),
            reason: format!(
                "it is part of the installed collection(s) {}; remove those instead",
                users.join(", ")
            ),
        });
    }
    let mut report = RemoveReport {
        name: target.name.clone(),
        kind: target.kind.clone(),
        removed: Vec::new(),
        kept: Vec::new(),
        warnings,
        validated: false,
        reloaded: false,
    };
    let mut to_unlink = Vec::new();
    for item in target_closure.iter().rev() {
        if !is_installed(item) {
            continue;
        }
        // Needed by a collection outside this removal: keep.
        let users: Vec<String> = needed_by
            .get(&key(item))
            .map(|u| {
                u.iter()
                    .filter(|c| !inside.contains(&("collections".to_string(), (*c).clone())))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !users.is_empty() {
            report.kept.push(KeptItem {
                name: item.name.clone(),
                kind: item.kind.clone(),
                needed_by: users,
            });
            continue;
        }
        to_unlink.push(*item);
    }
    let mut txn = Txn::new(backup_dir);
    let mut candidates = Vec::new();
    for item in to_unlink {
        if let Err(e) = txn.remove_link(&layout.link_path(item)) {
            return Err(undo(txn, io_error(e)));
        }
        let state = layout.local_state(item, true);
        report.removed.push(ItemRef {
            name: item.name.clone(),
            kind: item.kind.clone(),
            version: state
                .local_version(item)
                .unwrap_or(&item.version)
                .to_string(),
        });
        candidates.push(check::Candidate {
            name: item.name.clone(),
            link: layout.link_path(item).display().to_string(),
            hub_file: layout.hub_path(item).display().to_string(),
        });
    }
    Ok((txn, report, candidates))
}
