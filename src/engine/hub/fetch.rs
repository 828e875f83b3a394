//! The hub index: fetched from `hub_url` (size-capped), cached whole in
//! `cache_dir/.index.json`, and read back from the cache when a listing cannot reach
//! the hub.

use super::{blocking, txn, unix_secs, HubError, Index, IndexInfo, IndexSource, Inner, Loaded};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

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

impl Inner {
    pub(super) fn cache_path(&self) -> PathBuf {
        self.cache_dir.join(".index.json")
    }

    pub(super) fn info(&self, l: &Loaded) -> IndexInfo {
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

    pub(super) fn unreachable(&self, url: &reqwest::Url, e: &reqwest::Error) -> HubError {
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
    pub(super) async fn get(&self, url: &reqwest::Url, max: u64) -> Result<Bytes, HubError> {
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
    pub(super) async fn fetch_index(&self) -> Result<Arc<Loaded>, HubError> {
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

    pub(super) async fn load_cache(&self) -> Option<Result<Loaded, String>> {
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

    pub(super) async fn index_for_listing(&self) -> Result<Arc<Loaded>, HubError> {
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
}
