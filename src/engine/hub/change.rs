//! One change to the engine's hub items, from the request to the reload: the item and
//! what it pulls in resolved from a fresh index, the files written (see `apply.rs`),
//! the engine's config test, rollback on refusal, then the reload and the pruning of
//! old backups.

use super::apply::{apply_install, apply_remove};
use super::txn::Txn;
use super::{
    blocking, check, undo, HubError, Index, Inner, InstallReport, PresetRequest, RemoveReport,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{info, warn};

impl Inner {
    pub(super) async fn install(
        self: Arc<Self>,
        req: PresetRequest,
    ) -> Result<InstallReport, HubError> {
        let name = check_name(&req.name)?;
        let _guard = self.op_lock.lock().await;
        let loaded = self.fetch_index().await?;
        let (root, closure, mut warnings) = {
            let (root, others) = loaded.index.resolve(&name, req.kind.as_deref())?;
            let mut warnings = Vec::new();
            if !others.is_empty() {
                warnings.push(format!(
                    "{name} is also a {} item; installed the {} one (pass \"type\" to choose)",
                    others.join(", "),
                    root.kind
                ));
            }
            let closure: Vec<(String, String)> = loaded
                .index
                .closure(root)?
                .into_iter()
                .map(|i| (i.kind.clone(), i.name.clone()))
                .collect();
            ((root.kind.clone(), root.name.clone()), closure, warnings)
        };

        // Every file, checked against its digest, before anything is written.
        let mut bodies = Vec::with_capacity(closure.len());
        for (kind, name) in &closure {
            let item = loaded
                .index
                .get(kind, name)
                .ok_or_else(|| HubError::Internal(format!("{kind} {name} left the index")))?;
            let body = match item.content() {
                Some(decoded) => decoded?,
                None => {
                    let url =
                        self.hub_url
                            .join(&item.path)
                            .map_err(|e| HubError::MissingContent {
                                item: item.name.clone(),
                                kind: item.kind.clone(),
                                reason: format!("no URL for its path {:?}: {e}", item.path),
                            })?;
                    self.get(&url, 16 << 20)
                        .await
                        .map_err(|e| HubError::MissingContent {
                            item: item.name.clone(),
                            kind: item.kind.clone(),
                            reason: format!(
                                "the index has no `content` and the download failed: {e}"
                            ),
                        })?
                        .to_vec()
                }
            };
            item.verify(&body)?;
            bodies.push(body);
        }

        let backup_dir = self.backup_dir("install", &name);
        let layout = self.layout.clone();
        let plan_loaded = loaded.clone();
        let plan_closure = closure.clone();
        let (txn, mut report) = blocking(move || {
            apply_install(&layout, &plan_loaded, &plan_closure, &bodies, backup_dir)
        })
        .await?;
        report.name = root.1.clone();
        report.kind = root.0.clone();
        warnings.append(&mut report.warnings);
        report.warnings = warnings;
        for f in &report.data_files_missing {
            warn!(item = %f.item, file = %f.path.display(), source = ?f.source_url,
                "hub: data file not downloaded; the engine runs without it");
        }
        if txn.is_empty() {
            info!(name = %report.name, "hub: already installed and up to date; nothing changed");
            return Ok(report);
        }

        let candidates = closure
            .iter()
            .filter_map(|(k, n)| loaded.index.get(k, n))
            .map(|i| check::Candidate {
                name: i.name.clone(),
                link: self.layout.link_path(i).display().to_string(),
                hub_file: self.layout.hub_path(i).display().to_string(),
            })
            .collect::<Vec<_>>();
        let backups = self.validate_or_rollback(txn, &candidates).await?;
        report.backup_dir = backups;
        report.validated = true;
        (report.reloaded, report.warnings) = self.reload(report.warnings).await;
        info!(name = %report.name, installed = report.installed.len(), updated = report.updated.len(),
            data_files_missing = report.data_files_missing.len(), "hub: installed");
        Ok(report)
    }

    pub(super) async fn remove(
        self: Arc<Self>,
        req: PresetRequest,
    ) -> Result<RemoveReport, HubError> {
        let name = check_name(&req.name)?;
        let _guard = self.op_lock.lock().await;
        // The index the installed items came from; else the one last fetched.
        let local = {
            let path = self.layout.index_path.clone();
            blocking(move || {
                Ok(std::fs::read(&path)
                    .ok()
                    .and_then(|raw| Index::parse(&raw).ok()))
            })
            .await?
        };
        let index = match local {
            Some(i) => i,
            None => match self.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                Some(l) => l.index.clone(),
                None => {
                    return Err(HubError::NotInstalled {
                        name,
                        kind: req.kind.unwrap_or_else(|| "item".into()),
                        hint: Some(format!(
                            "the engine's index {} is missing or unreadable, so nothing was installed from the hub",
                            self.layout.index_path.display()
                        )),
                    })
                }
            },
        };
        let layout = self.layout.clone();
        let backup_dir = self.backup_dir("remove", &name);
        let kind = req.kind.clone();
        let (txn, mut report, candidates) =
            blocking(move || apply_remove(&layout, &index, &name, kind.as_deref(), backup_dir))
                .await?;
        if txn.is_empty() {
            return Ok(report);
        }
        self.validate_or_rollback(txn, &candidates).await?;
        report.validated = true;
        (report.reloaded, report.warnings) = self.reload(report.warnings).await;
        info!(name = %report.name, removed = report.removed.len(), kept = report.kept.len(), "hub: removed");
        Ok(report)
    }

    pub(super) fn backup_dir(&self, op: &str, name: &str) -> PathBuf {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.cache_dir
            .join("backups")
            .join(format!("{ms:015}-{op}-{slug}"))
    }

    /// `crowdsec -t` on the changed tree: keeps it when accepted (returns the backup
    /// dir), else rolls back and explains.
    pub(super) async fn validate_or_rollback(
        &self,
        txn: Txn,
        candidates: &[check::Candidate],
    ) -> Result<Option<PathBuf>, HubError> {
        let bin = &self.layout.crowdsec_bin;
        let config = &self.layout.config_file;
        let verdict = check::config_test(bin, config, self.opts.validate_timeout).await;
        match verdict {
            Ok(v) if v.ok => {
                let backups = txn.commit();
                self.prune_backups().await;
                Ok(backups)
            }
            Ok(v) => {
                let complaint = check::complaint(&v.output);
                let item = check::failing_item(&complaint, candidates);
                warn!(
                    ?item,
                    ?complaint,
                    "hub: the engine rejected the change; rolling back"
                );
                let rolled = blocking(move || Ok(txn.rollback())).await?;
                if !rolled.is_empty() {
                    return Err(HubError::RollbackFailed {
                        cause: format!("the engine rejected the change: {}", complaint.join("; ")),
                        problems: rolled,
                    });
                }
                let again = check::config_test(bin, config, self.opts.validate_timeout).await;
                Err(HubError::ValidationFailed {
                    item,
                    complaint,
                    already_failing: matches!(again, Ok(v) if !v.ok),
                })
            }
            Err(e) => {
                warn!(error = %e, "hub: cannot validate; rolling back");
                blocking(move || Ok(undo(txn, e))).await.and_then(Err)
            }
        }
    }

    pub(super) async fn reload(&self, mut warnings: Vec<String>) -> (bool, Vec<String>) {
        let Some(hook) = self.opts.reload.clone() else {
            warnings.push(
                "no engine reload configured: the engine loads the change at its next start".into(),
            );
            return (false, warnings);
        };
        match tokio::task::spawn_blocking(move || hook.reload()).await {
            Ok(Ok(())) => (true, warnings),
            Ok(Err(e)) => {
                warn!(error = %e, "hub: engine reload failed");
                warnings.push(format!(
                    "the change is in place but the engine reload failed: {e}; restart the engine to apply it"
                ));
                (false, warnings)
            }
            Err(e) => {
                warnings.push(format!("the engine reload hook panicked: {e}"));
                (false, warnings)
            }
        }
    }

    pub(super) async fn prune_backups(&self) {
        let dir = self.cache_dir.join("backups");
        let keep = self.opts.keep_backups;
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            let mut names: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            let excess = names.len().saturating_sub(keep);
            for old in &names[..excess] {
                if let Err(e) = std::fs::remove_dir_all(old) {
                    warn!(dir = %old.display(), error = %e, "hub: cannot prune an old backup");
                }
            }
        })
        .await;
    }
}

fn check_name(name: &str) -> Result<String, HubError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(HubError::InvalidRequest(
            "\"name\" is empty; give an item name such as crowdsecurity/caddy".into(),
        ));
    }
    if name.len() > 200 || name.chars().any(char::is_control) {
        return Err(HubError::InvalidRequest(format!(
            "\"name\" {name:?} is not an item name (author/name, printable, at most 200 bytes)"
        )));
    }
    Ok(name.to_string())
}
