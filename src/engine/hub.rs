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
//!
//! Here: the [`Hub`] and what it answers; `fetch.rs` the index fetched and cached,
//! `change.rs` an install or removal from start to reload, `apply.rs` the file steps
//! of one (planned, then applied in a `txn.rs` transaction), `index.rs` the index,
//! `layout.rs` the engine's files, `check.rs` the engine's config test.

mod apply;
mod change;
mod check;
mod error;
mod fetch;
mod index;
mod layout;
mod txn;

pub use error::{ErrorBody, HubError};
pub use index::{sha256_hex, Index, Item, Version, TYPE_ORDER};
pub use layout::{DataFile, EngineLayout, LinkState, LocalState};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::warn;
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
