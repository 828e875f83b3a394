//! CrowdSec hub presets: browse the hub index, and install or remove collections,
//! parsers, scenarios and postoverflows in the managed engine's config, the way cscli
//! does, but checked first and undone whole when the engine refuses the result.
//!
//! - The index is fetched from `hub_url` and cached in `cache_dir/.index.json` (written
//!   whole or not at all). A listing falls back to the cache when the hub cannot be
//!   reached and says so; install needs the hub.
//! - Install resolves a collection's dependencies recursively (cycles refused), checks
//!   every item's sha256 against the index before writing anything, writes the item files
//!   under `hub_dir` and links them in `config_dir` as cscli 1.4.6 does, copies the index
//!   used to `index_path`, backs up every file it replaces, runs `crowdsec -c CONFIG -t`
//!   and rolls everything back when the engine refuses. Then it asks the engine to reload.
//! - Items' `data:` files are not downloaded (no network beyond the hub here): the report
//!   lists the missing ones. The 1.4.6 engine logs an error for each and loads the rest.
//! - Operations that change files run one at a time, in a task of their own, so a caller
//!   that goes away never leaves a change half done.

mod check;
mod error;
mod index;
mod layout;
mod txn;

pub use error::{ErrorBody, HubError};
pub use index::{sha256_hex, Index, Item, Version, TYPE_ORDER};
pub use layout::{DataFile, EngineLayout, LinkState, LocalState};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};
use txn::{StepError, Txn};

/// The index URL of current cscli releases (1.6 and later): the hub's `master` branch.
pub use crate::config::DEFAULT_HUB_URL;
/// The index URL cscli 1.4.x uses (`https://hub-cdn.crowdsec.net/<branch>/.index.json`,
/// branch `master` unless the installed engine is older than the latest release). Item
/// files without `content` in the index are fetched next to it: `<dir of hub_url>/<path>`.
pub const HUB_URL_CROWDSEC_1_4: &str = "https://hub-cdn.crowdsec.net/master/.index.json";

/// Asks the managed engine to load its new configuration (the supervisor sends it
/// SIGHUP). Called after a change passed the engine's config test.
pub trait ReloadEngine: Send + Sync {
    fn reload(&self) -> Result<(), String>;
}

impl<F> ReloadEngine for F
where
    F: Fn() -> Result<(), String> + Send + Sync,
{
    fn reload(&self) -> Result<(), String> {
        self()
    }
}

/// Settings of a [`Hub`]; [`HubOptions::default`] gives every default.
#[derive(Clone)]
pub struct HubOptions {
    /// Called after a successful change. Default: none (the report says so).
    pub reload: Option<Arc<dyn ReloadEngine>>,
    /// A listing fetches the index again when the one in memory is older. Default 15 min.
    pub index_max_age: Duration,
    /// Deadline of one hub request, body included. Default 30 s.
    pub fetch_timeout: Duration,
    /// Deadline of `crowdsec -t`. Default 120 s.
    pub validate_timeout: Duration,
    /// Largest index accepted. Default 64 MiB (today's index is about 4 MB).
    pub max_index_bytes: u64,
    /// Backup directories kept in `cache_dir/backups`. Default 10.
    pub keep_backups: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            reload: None,
            index_max_age: Duration::from_secs(15 * 60),
            fetch_timeout: Duration::from_secs(30),
            validate_timeout: Duration::from_secs(120),
            max_index_bytes: 64 << 20,
            keep_backups: 10,
        }
    }
}

/// Body of `POST /hub/presets/install` and `/remove`. `type` is needed only for the few
/// names that several item types share (a bare name prefers collections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetRequest {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl PresetRequest {
    pub fn new(name: &str) -> PresetRequest {
        PresetRequest {
            name: name.to_string(),
            kind: None,
        }
    }
}

/// One item of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresetInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// The index's current version.
    pub version: String,
    /// Linked in the engine's config dir.
    pub installed: bool,
    /// Installed at the index's current version.
    pub up_to_date: bool,
    /// The installed version, when the installed file matches one.
    pub local_version: Option<String>,
    /// Installed but edited locally (matches no version of the index).
    pub tainted: bool,
    /// The index marks the current version deprecated.
    pub deprecated: bool,
}

/// Where a listing's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexSource {
    Hub,
    Cache,
}

/// The index an answer is based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexInfo {
    pub url: String,
    pub source: IndexSource,
    /// When it was fetched from the hub (Unix seconds).
    pub fetched_at: u64,
    pub items: usize,
    /// Items of the index left out as malformed, each with why.
    pub skipped: Vec<String>,
    /// Set when the hub could not be reached and the cache answered instead: why.
    pub warning: Option<String>,
}

/// Answer of `GET /hub/presets`.
#[derive(Debug, Clone, Serialize)]
pub struct PresetList {
    pub presets: Vec<PresetInfo>,
    pub index: IndexInfo,
}

/// An item and a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemRef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
}

/// An item brought to a newer version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemUpdate {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub from: Option<String>,
    pub to: String,
}

/// Answer of an install.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// False when everything was already in place: nothing was written or reloaded.
    pub changed: bool,
    /// Items newly enabled.
    pub installed: Vec<ItemRef>,
    /// Items whose file was replaced by the index's current version.
    pub updated: Vec<ItemUpdate>,
    pub unchanged: Vec<ItemRef>,
    /// The engine's `.index.json` was replaced by the index used.
    pub index_updated: bool,
    /// `data:` files the items read that are not in the engine's data dir. They are not
    /// downloaded; the engine logs an error for each and runs without them.
    pub data_files_missing: Vec<DataFile>,
    pub warnings: Vec<String>,
    /// Where the replaced files were copied, when some were.
    pub backup_dir: Option<PathBuf>,
    /// `crowdsec -t` accepted the result.
    pub validated: bool,
    pub reloaded: bool,
}

/// An installed item a removal kept because other installed collections need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptItem {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub needed_by: Vec<String>,
}

/// Answer of a removal.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Items disabled (their links removed; their files stay in the hub dir, as cscli
    /// leaves them without `--purge`).
    pub removed: Vec<ItemRef>,
    pub kept: Vec<KeptItem>,
    pub warnings: Vec<String>,
    pub validated: bool,
    pub reloaded: bool,
}

/// The hub presets of one engine. Cheap to clone; clones share state and the lock that
/// runs changes one at a time.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    hub_url: reqwest::Url,
    host: String,
    cache_dir: PathBuf,
    layout: EngineLayout,
    http: reqwest::Client,
    opts: HubOptions,
    op_lock: tokio::sync::Mutex<()>,
    current: Mutex<Option<Arc<Loaded>>>,
    /// Set for a plain `http://` hub URL off loopback (see [`plain_http_warning`]).
    url_warning: Option<String>,
}

struct Loaded {
    index: Index,
    raw: Bytes,
    fetched_at: SystemTime,
    source: IndexSource,
    warning: Option<String>,
}

impl Hub {
    /// A hub with [`HubOptions::default`]. `hub_url` is the index URL
    /// ([`DEFAULT_HUB_URL`]); `cache_dir` holds the cached index and the backups (e.g.
    /// `data_dir/hub`); `http` is the client used for the hub (proxy settings apply).
    pub fn new(
        hub_url: &str,
        cache_dir: &Path,
        layout: EngineLayout,
        http: reqwest::Client,
    ) -> Result<Hub, HubError> {
        Hub::with_options(hub_url, cache_dir, layout, http, HubOptions::default())
    }

    pub fn with_options(
        hub_url: &str,
        cache_dir: &Path,
        layout: EngineLayout,
        http: reqwest::Client,
        opts: HubOptions,
    ) -> Result<Hub, HubError> {
        let url = reqwest::Url::parse(hub_url.trim()).map_err(|e| {
            HubError::InvalidRequest(format!(
                "hub_url {hub_url:?} is not a URL ({e}); e.g. {DEFAULT_HUB_URL}"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(HubError::InvalidRequest(format!(
                "hub_url {hub_url:?} must be an http(s) URL with a host, e.g. {DEFAULT_HUB_URL}"
            )));
        }
        let host = match url.port_or_known_default() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let url_warning = plain_http_warning(&url);
        if let Some(w) = &url_warning {
            warn!(warning = %w, "hub: plain http");
        }
        Ok(Hub {
            inner: Arc::new(Inner {
                url_warning,
                hub_url: url,
                host,
                cache_dir: cache_dir.to_path_buf(),
                layout,
                http,
                opts,
                op_lock: tokio::sync::Mutex::new(()),
                current: Mutex::new(None),
            }),
        })
    }

    /// The warning about `hub_url` itself (plain http off loopback), also given in every
    /// listing's `index.warning`.
    pub fn url_warning(&self) -> Option<&str> {
        self.inner.url_warning.as_deref()
    }

    pub fn layout(&self) -> &EngineLayout {
        &self.inner.layout
    }

    /// Fetches the index from the hub now (and caches it).
    pub async fn refresh(&self) -> Result<IndexInfo, HubError> {
        let inner = self.inner.clone();
        let result =
            spawn_op(async move { inner.fetch_index().await.map(|l| inner.info(&l)) }).await;
        count("refresh", &result.as_ref().map(|_| true));
        result
    }

    /// Items whose name or description contains `q` (case-insensitive), of type `kind`
    /// (`collections`, `parsers`, `scenarios`, `postoverflows`, ...; the singular works
    /// too), with their install state. Uses the index fetched within
    /// [`HubOptions::index_max_age`], else fetches it; when the hub cannot be reached,
    /// answers from the cached index and says so in [`IndexInfo::warning`].
    pub async fn list(&self, q: Option<&str>, kind: Option<&str>) -> Result<PresetList, HubError> {
        let inner = self.inner.clone();
        let (q, kind) = (q.map(str::to_string), kind.map(str::to_string));
        spawn_op(async move {
            let loaded = inner.index_for_listing().await?;
            let info = inner.info(&loaded);
            let layout = inner.layout.clone();
            let presets = blocking(move || {
                let items = loaded.index.search(q.as_deref(), kind.as_deref())?;
                Ok(items.into_iter().map(|i| preset_info(&layout, i)).collect())
            })
            .await?;
            Ok(PresetList {
                presets,
                index: info,
            })
        })
        .await
    }

    /// Installs an item (a collection with everything it pulls in) from a freshly
    /// fetched index; see the module doc for the steps. Installing what is already in
    /// place at the index's version changes nothing.
    pub async fn install(&self, req: &PresetRequest) -> Result<InstallReport, HubError> {
        let inner = self.inner.clone();
        let req = req.clone();
        let result = spawn_op(async move { inner.install(req).await }).await;
        count("install", &result.as_ref().map(|r| r.changed));
        result
    }

    /// Removes an installed item; for a collection also its members that no other
    /// installed collection needs. Validated and rolled back like an install.
    pub async fn remove(&self, req: &PresetRequest) -> Result<RemoveReport, HubError> {
        let inner = self.inner.clone();
        let req = req.clone();
        let result = spawn_op(async move { inner.remove(req).await }).await;
        count("remove", &result.as_ref().map(|_| true));
        result
    }
}

/// Runs an operation in a task of its own: dropping the caller's future (a client that
/// hangs up) does not stop it half way.
async fn spawn_op<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, HubError>> + Send + 'static,
) -> Result<T, HubError> {
    tokio::spawn(fut)
        .await
        .map_err(|e| HubError::Internal(format!("hub task failed: {e}")))?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HubError::Internal(format!("hub worker failed: {e}")))?
}

fn count<T>(op: &'static str, result: &Result<T, &HubError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    metrics::counter!(crate::metrics::HUB_OPERATIONS, "op" => op, "outcome" => outcome)
        .increment(1);
}

fn preset_info(layout: &EngineLayout, item: &Item) -> PresetInfo {
    let state = layout.local_state(item, false);
    PresetInfo {
        name: item.name.clone(),
        kind: item.kind.clone(),
        description: item.description.clone(),
        version: item.version.clone(),
        installed: state.installed(),
        up_to_date: state.up_to_date(item),
        local_version: state.local_version(item).map(str::to_string),
        tainted: state.tainted(item),
        deprecated: item
            .versions
            .get(&item.version)
            .is_some_and(|v| v.deprecated),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error and its causes, joined (reqwest hides the OS error in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn io_error(e: StepError) -> HubError {
    HubError::Io {
        action: e.action.to_string(),
        path: e.path.display().to_string(),
        reason: e.error.to_string(),
    }
}

/// Rolls `txn` back; a rollback that fails becomes the error.
fn undo(txn: Txn, cause: HubError) -> HubError {
    let problems = txn.rollback();
    if problems.is_empty() {
        cause
    } else {
        warn!(%cause, ?problems, "hub: rollback incomplete");
        HubError::RollbackFailed {
            cause: cause.to_string(),
            problems,
        }
    }
}

impl Inner {
    fn cache_path(&self) -> PathBuf {
        self.cache_dir.join(".index.json")
    }

    fn info(&self, l: &Loaded) -> IndexInfo {
        IndexInfo {
            url: self.hub_url.to_string(),
            source: l.source,
            fetched_at: unix_secs(l.fetched_at),
            items: l.index.len(),
            skipped: l.index.skipped.clone(),
            warning: match (&self.url_warning, &l.warning) {
                (Some(url), Some(cache)) => Some(format!("{url}; {cache}")),
                (url, cache) => url.clone().or_else(|| cache.clone()),
            },
        }
    }

    fn unreachable(&self, url: &reqwest::Url, e: &reqwest::Error) -> HubError {
        let reason = if e.is_timeout() {
            format!(
                "no answer within {:?} ({})",
                self.opts.fetch_timeout,
                chain(e)
            )
        } else {
            chain(e)
        };
        let host = match url.port_or_known_default() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => self.host.clone(),
        };
        HubError::Unreachable {
            host,
            url: url.to_string(),
            reason,
        }
    }

    /// GETs `url` with the size cap; the body, or why not.
    async fn get(&self, url: &reqwest::Url, max: u64) -> Result<Bytes, HubError> {
        let resp = self
            .http
            .get(url.clone())
            .timeout(self.opts.fetch_timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(url, &e))?;
        if !resp.status().is_success() {
            return Err(HubError::HubStatus {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let too_large = || HubError::BadIndex {
            url: url.to_string(),
            reason: format!("larger than {max} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(url, &e))?;
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Fetches and parses the index, then caches it (memory and `cache_dir`).
    async fn fetch_index(&self) -> Result<Arc<Loaded>, HubError> {
        let url = self.hub_url.clone();
        let raw = self.get(&url, self.opts.max_index_bytes).await?;
        let parse_raw = raw.clone();
        let index = blocking(move || {
            Index::parse(&parse_raw).map_err(|reason| HubError::BadIndex {
                url: url.to_string(),
                reason,
            })
        })
        .await?;
        for why in &index.skipped {
            warn!(item = %why, "hub: index item left out");
        }
        let loaded = Arc::new(Loaded {
            index,
            raw: raw.clone(),
            fetched_at: SystemTime::now(),
            source: IndexSource::Hub,
            warning: None,
        });
        let cache = self.cache_path();
        let cached = blocking(move || {
            let write = || -> Result<(), String> {
                let dir = cache.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                txn::write_atomic(&cache, &raw, 0o644, None)
                    .map_err(|e| format!("cannot {} {}: {}", e.action, e.path.display(), e.error))
            };
            Ok(write())
        })
        .await;
        match cached {
            Ok(Ok(())) => {}
            Ok(Err(why)) => warn!(%why, "hub: cannot cache the index"),
            Err(e) => warn!(error = %e, "hub: cannot cache the index"),
        }
        info!(url = %self.hub_url, items = loaded.index.len(), "hub: index fetched");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        Ok(loaded)
    }

    async fn load_cache(&self) -> Option<Result<Loaded, String>> {
        let path = self.cache_path();
        blocking(move || {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => return Ok(None),
            };
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|raw| {
                    let index = Index::parse(&raw)?;
                    Ok(Loaded {
                        index,
                        raw: Bytes::from(raw),
                        fetched_at: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        source: IndexSource::Cache,
                        warning: None,
                    })
                })
                .map_err(|e| format!("cached index {}: {e}", path.display()));
            Ok(Some(loaded))
        })
        .await
        .unwrap_or_else(|e| Some(Err(e.to_string())))
    }

    async fn index_for_listing(&self) -> Result<Arc<Loaded>, HubError> {
        let fresh = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|l| l.fetched_at.elapsed().unwrap_or(Duration::MAX) < self.opts.index_max_age);
        if let Some(l) = fresh {
            return Ok(l);
        }
        let err = match self.fetch_index().await {
            Ok(l) => return Ok(l),
            Err(e) if e.is_upstream() => e,
            Err(e) => return Err(e),
        };
        match self.load_cache().await {
            Some(Ok(mut cached)) => {
                let age = cached.fetched_at.elapsed().unwrap_or_default().as_secs();
                let warning = format!(
                    "{err}; showing the cached index fetched {age} s ago ({})",
                    self.cache_path().display()
                );
                warn!(%warning, "hub: listing from the cache");
                cached.warning = Some(warning);
                Ok(Arc::new(cached))
            }
            Some(Err(why)) => {
                warn!(%err, %why, "hub: unreachable and the cache is unusable");
                Err(err)
            }
            None => {
                warn!(%err, "hub: unreachable and nothing cached");
                Err(err)
            }
        }
    }

    async fn install(self: Arc<Self>, req: PresetRequest) -> Result<InstallReport, HubError> {
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

    async fn remove(self: Arc<Self>, req: PresetRequest) -> Result<RemoveReport, HubError> {
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

    fn backup_dir(&self, op: &str, name: &str) -> PathBuf {
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
    async fn validate_or_rollback(
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

    async fn reload(&self, mut warnings: Vec<String>) -> (bool, Vec<String>) {
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

    async fn prune_backups(&self) {
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

/// A warning for a hub URL in plain `http://`: anyone on the path can change the index,
/// and with it the digests that vouch for what gets installed. Loopback (tests, a local
/// mirror) is not warned about.
fn plain_http_warning(url: &reqwest::Url) -> Option<String> {
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "hub_url {url} is plain http: the index (and the digests it gives for every item) \
             can be altered in transit; use https"
        )
    })
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

/// One planned change.
enum Action {
    WriteHubFile { item: usize },
    Link { item: usize },
}

/// Plans and applies an install of `closure` (with `bodies`, checked): conflicts are
/// found before the first write; a failed write rolls back what was done.
fn apply_install(
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
fn apply_remove(
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
