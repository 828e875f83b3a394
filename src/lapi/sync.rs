//! The sync loop: a full `startup=true` pull, then deltas every `update_frequency`. A pull
//! that fails is dropped whole and never removes anything known; because LAPI has already
//! moved this bouncer's cursor, the next successful pull is a full one again, so nothing is
//! lost either. Retries back off exponentially with jitter, up to `lapi_retry_max`.
//!
//! A full pull adds and updates at once, but never drops a held decision on its word
//! alone (a stream cut short by a database error, or a shorter answer, is still valid
//! JSON): a held decision it leaves out is kept, and the next pull is full again; it is
//! lifted when that second full pull leaves it out too, or at once when LAPI lists it in
//! `deleted`. A wall-clock jump (see [`crate::clock::ClockWatch`]) forces a full resync
//! and holds every purge until one has succeeded.

use super::{LapiClient, List, PullError};
use crate::clock;
use crate::config::Config;
use crate::control::{Command, Owner};
use crate::decision::{
    accept_deleted, accept_new, Decision, Filters, RawDecision, Rejection, Target,
};
use crate::store::Snapshot;
use crate::store::{Decider, UnreachablePolicy, Writer};
use rand::Rng;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// What the loop has done, for `/status`, diagnostics and tests.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub pulls_ok: AtomicU64,
    pub pulls_failed: AtomicU64,
    /// Decisions skipped as data errors (bad value, unknown scope, ...).
    pub rejected: AtomicU64,
    /// Decisions left out by the operator's filters.
    pub filtered: AtomicU64,
    /// Unix ms of the last successful pull; 0 before the first.
    pub last_success_ms: AtomicI64,
    /// Unix ms of the last failed pull; 0 before the first.
    pub last_failure_ms: AtomicI64,
    pub last_duration_ms: AtomicU64,
    /// Set by the first successful pull; the doors read it as [`crate::ready::Readiness`].
    pub first_sync_done: crate::ready::FirstSync,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    last_error: Mutex<Option<String>>,
    last_reason: Mutex<Option<&'static str>>,
}

impl SyncStats {
    /// Failed pulls by reason.
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        self.failures.lock().unwrap().clone()
    }

    /// The reason of the last failure when it came after the last success.
    pub fn failing(&self) -> Option<&'static str> {
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        if failed == 0 || failed < self.last_success_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.last_reason.lock().unwrap().as_ref().copied()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    fn record_failure(&self, e: &PullError) {
        self.pulls_failed.fetch_add(1, Ordering::Relaxed);
        self.last_failure_ms
            .store(clock::now_ms(), Ordering::Relaxed);
        *self.failures.lock().unwrap().entry(e.reason()).or_default() += 1;
        *self.last_error.lock().unwrap() = Some(e.to_string());
        *self.last_reason.lock().unwrap() = Some(e.reason());
        metrics::counter!(crate::metrics::LAPI_FAILURES, "reason" => e.reason()).increment(1);
    }
}

/// Turns decisions from one pull into changes, off the async runtime.
struct Sink {
    now_ms: i64,
    filters: Arc<Filters>,
    mode: Mode,
    rejected: BTreeMap<Rejection, u64>,
    samples: Vec<(Rejection, String)>,
}

enum Mode {
    /// A full pull builds a new state from nothing; `deleted` is what LAPI said expired.
    Full {
        writer: Box<Writer>,
        deleted: HashSet<(i64, Target)>,
    },
    /// A delta is collected, then applied only if the whole answer was good.
    Delta {
        upserts: Vec<Decision>,
        deletes: Vec<(i64, Target)>,
    },
}

impl super::DecisionSink for Sink {
    fn answered(&mut self) {
        // Expiries are `now + duration`: a pull that waited long for its answer (a busy
        // LAPI, a slow proxy) would otherwise end every decision early by that wait.
        self.now_ms = clock::now_ms();
    }

    fn take(&mut self, list: List, raw: RawDecision) {
        let value = raw.value.clone();
        let outcome = match list {
            List::New => {
                accept_new(raw, self.now_ms, &self.filters).map(|d| match &mut self.mode {
                    Mode::Full { writer, .. } => writer.insert(&d),
                    Mode::Delta { upserts, .. } => upserts.push(d),
                })
            }
            List::Deleted => accept_deleted(&raw).map(|(id, target)| match &mut self.mode {
                // Confirms at once that a held decision the full pull left out is gone.
                Mode::Full { deleted, .. } => {
                    deleted.insert((id, target));
                }
                Mode::Delta { deletes, .. } => deletes.push((id, target)),
            }),
        };
        if let Err(why) = outcome {
            // `deleted` entries of filtered-out scopes are expected noise.
            if list == List::Deleted && why == Rejection::UnsupportedScope {
                return;
            }
            *self.rejected.entry(why).or_default() += 1;
            if why.is_error() && self.samples.len() < 50 {
                self.samples
                    .push((why, value.unwrap_or_else(|| "<none>".into())));
            }
        }
    }
}

impl PartialOrd for Rejection {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rejection {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// The loop's settings, taken from the config.
#[derive(Clone)]
pub struct SyncSettings {
    pub update_frequency: Duration,
    pub stale_after: Duration,
    pub policy: UnreachablePolicy,
    pub retry_max: Duration,
    /// A full pull at least this often (see `Config::full_resync_interval`).
    pub full_resync: Duration,
    pub filters: Arc<Filters>,
}

impl SyncSettings {
    pub fn from_config(c: &Config) -> SyncSettings {
        SyncSettings {
            update_frequency: c.update_frequency,
            stale_after: c.stale_after,
            policy: c.on_lapi_unreachable,
            retry_max: c.lapi_retry_max,
            full_resync: c.full_resync_interval,
            filters: Arc::new(Filters {
                types: c.supported_decisions_types.clone(),
                origins: c.origins.clone(),
                scenarios_containing: c
                    .scenarios_containing
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                scenarios_not_containing: c
                    .scenarios_not_containing
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
            }),
        }
    }
}

pub struct Syncer {
    /// The LAPI pulled from; `None` while there is none (the managed engine is stopped).
    client: Option<LapiClient>,
    upstream: watch::Receiver<super::Upstream>,
    pub owner: Owner,
    pub decider: Arc<Decider>,
    pub stats: Arc<SyncStats>,
    pub settings: SyncSettings,
    commands: mpsc::Receiver<Command>,
    /// `PullNow` asks that arrived during the pull in flight: the next pull answers them.
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
    logged_values: HashSet<String>,
    /// Held decisions the last full pull left out: the next full pull confirms or clears.
    held: HashSet<(i64, Target)>,
    /// Set by a wall-clock jump: no purge until a full pull has refreshed the expiries.
    purge_hold: bool,
}

/// The loop was told to stop.
struct Stopped;

impl Syncer {
    pub fn new(
        mut upstream: watch::Receiver<super::Upstream>,
        owner: Owner,
        decider: Arc<Decider>,
        stats: Arc<SyncStats>,
        settings: SyncSettings,
        commands: mpsc::Receiver<Command>,
    ) -> Syncer {
        let client = upstream.borrow_and_update().client.clone();
        Syncer {
            client,
            upstream,
            owner,
            decider,
            stats,
            settings,
            commands,
            waiting: Vec::new(),
            logged_values: HashSet::new(),
            held: HashSet::new(),
            purge_hold: false,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let started = Instant::now();
        let mut last_ok: Option<Instant> = None;
        let mut need_full = true;
        let mut failures: u32 = 0;
        let mut last_purge = Instant::now();
        let mut last_full = Instant::now();
        if let Some(client) = &self.client {
            let all = client.endpoints().all();
            let others = if all.len() > 1 {
                format!(" (first of api_url: {})", all.join(", "))
            } else {
                String::new()
            };
            info!(
                "[CROWDSEC_STARTUP] starting decision sync with LAPI at {}{others} every {:?}",
                client.url(),
                self.settings.update_frequency
            );
        }
        loop {
            if self.upstream.has_changed().unwrap_or(false) {
                self.take_upstream();
                need_full = true;
                failures = 0;
            }
            if self.client.is_none() {
                if self.idle(&mut shutdown).await {
                    break;
                }
                self.take_upstream();
                need_full = true;
                failures = 0;
                continue;
            }
            if self.owner.clock_jumped().is_some() {
                need_full = true;
                self.purge_hold = true;
            }
            // LAPI's deltas can miss decisions written while it answered a pull (the
            // cursor moves past rows not yet committed): a full pull now and then heals it.
            if last_full.elapsed() >= self.settings.full_resync {
                need_full = true;
            }
            let answering = std::mem::take(&mut self.waiting);
            let full = need_full;
            let outcome = match self.pull_serving(full, &mut shutdown).await {
                Ok(r) => r,
                Err(Stopped) => break,
            };
            let answer = outcome.as_ref().map(|_| ()).map_err(|e| e.to_string());
            for reply in answering {
                let _ = reply.send(answer.clone());
            }
            let wait = match outcome {
                Ok(()) => {
                    // Decisions held out of a full pull are confirmed by the next one.
                    need_full = !self.held.is_empty();
                    self.purge_hold &= !full;
                    if full {
                        last_full = Instant::now();
                    }
                    failures = 0;
                    last_ok = Some(Instant::now());
                    if self.decider.outage().is_some() {
                        info!("LAPI is back: enforcing decisions again");
                    }
                    self.decider.set_outage(None);
                    if !self.purge_hold && last_purge.elapsed() >= Duration::from_secs(60) {
                        if self.owner.purge().is_some() {
                            need_full = true;
                            self.purge_hold = true;
                        }
                        last_purge = Instant::now();
                    }
                    self.settings.update_frequency
                }
                Err(e) => {
                    failures += 1;
                    need_full = true;
                    self.stats.record_failure(&e);
                    let failed_at = self.client.as_ref().map(|c| c.url().to_string());
                    let wait = self.fail_over(&e, failures);
                    if self.stats.first_sync_done.load(Ordering::Relaxed) {
                        warn!(
                            "LAPI pull failed ({}), keeping {} known decisions; retry {} in {:.1}s: {e}",
                            e.reason(),
                            self.decider.snapshot().len(),
                            failures,
                            wait.as_secs_f64()
                        );
                    } else {
                        warn!(
                            "[CROWDSEC_STARTUP] waiting for LAPI at {} (attempt {}, next in {:.1}s): {e}",
                            failed_at.as_deref().unwrap_or("?"),
                            failures,
                            wait.as_secs_f64()
                        );
                    }
                    let since = last_ok.unwrap_or(started).elapsed();
                    if since >= self.settings.stale_after
                        && self.settings.policy != UnreachablePolicy::Keep
                        && self.decider.outage().is_none()
                    {
                        error!(
                            "LAPI unreachable for {:?} (stale_after {:?}): on_lapi_unreachable={:?} now applies",
                            since, self.settings.stale_after, self.settings.policy
                        );
                        self.decider.set_outage(Some(self.settings.policy));
                    }
                    if !self.purge_hold && last_purge.elapsed() >= Duration::from_secs(60) {
                        if self.owner.purge().is_some() {
                            self.purge_hold = true;
                        }
                        last_purge = Instant::now();
                    }
                    wait
                }
            };
            // Wait for the next pull, serving commands meanwhile; a `PullNow` cuts it short.
            let sleep = tokio::time::sleep(if self.waiting.is_empty() {
                wait
            } else {
                Duration::ZERO
            });
            tokio::pin!(sleep);
            let stop = loop {
                tokio::select! {
                    _ = &mut sleep => break false,
                    _ = shutdown.changed() => break true,
                    Some(cmd) = self.commands.recv() => {
                        if let Some(reply) = self.owner.handle(cmd) {
                            self.waiting.push(reply);
                            break false;
                        }
                    }
                }
            };
            if stop {
                break;
            }
        }
        for reply in self.waiting.drain(..) {
            let _ = reply.send(Err("cerberus is shutting down".into()));
        }
        info!("decision sync stopped");
    }

    /// After the `failures`-th failed pull in a row: moves to the next LAPI of `api_url`
    /// and says how long to wait. Each LAPI of the list is tried once at once; only when
    /// all have failed in a row does the backoff apply (`failures / n`-th step). With one
    /// LAPI that is the plain backoff. The next pull is a full one in any case (the
    /// failed pull may have moved the cursor): from a LAPI on the same database it
    /// answers the same set, so the held-decisions check holds nothing back, while from
    /// one on another database (a misconfiguration) it holds every missing decision
    /// until a second full pull confirms.
    fn fail_over(&self, e: &PullError, failures: u32) -> Duration {
        let Some(client) = &self.client else {
            return backoff(failures, self.settings.retry_max);
        };
        let endpoints = client.endpoints();
        let n = endpoints.all().len() as u32;
        endpoints.fail_over(endpoints.position(), e);
        if failures % n != 0 {
            // The next LAPI has not been tried since the last success: at once, but not
            // in a tight loop.
            Duration::from_millis(100)
        } else {
            backoff(failures / n, self.settings.retry_max)
        }
    }

    /// Takes the LAPI client of the moment (the engine came up, went down, or got a new key).
    fn take_upstream(&mut self) {
        self.client = self.upstream.borrow_and_update().client.clone();
        match &self.client {
            Some(c) => info!(
                "[CROWDSEC_STARTUP] syncing decisions from LAPI at {} every {:?}",
                c.url(),
                self.settings.update_frequency
            ),
            None => info!(
                "no LAPI to sync from (the engine is stopped): keeping {} known decisions",
                self.decider.snapshot().len()
            ),
        }
    }

    /// Waits without a LAPI: serves commands until one comes (or shutdown: true).
    async fn idle(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        for reply in self.waiting.drain(..) {
            let _ = reply.send(Err("no LAPI to pull from (the engine is stopped)".into()));
        }
        let mut purge = tokio::time::interval(Duration::from_secs(60));
        purge.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return true,
                r = self.upstream.changed() => {
                    if r.is_err() {
                        // Nobody can give a LAPI any more: stay idle until shutdown.
                        let _ = shutdown.changed().await;
                        return true;
                    }
                    return false;
                }
                _ = purge.tick() => {
                    if !self.purge_hold && self.owner.purge().is_some() {
                        // Until the full pull that follows the idle wait refreshes.
                        self.purge_hold = true;
                    }
                }
                Some(cmd) = self.commands.recv() => {
                    if let Some(reply) = self.owner.handle(cmd) {
                        let _ = reply.send(Err("no LAPI to pull from (the engine is stopped)".into()));
                    }
                }
            }
        }
    }

    /// One pull; commands that arrive meanwhile are served at once against the current
    /// state (a `PullNow` waits for the next pull).
    async fn pull_serving(
        &mut self,
        full: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Result<(), PullError>, Stopped> {
        let started = Instant::now();
        let sink = self.sink(full);
        let kind = if full { "startup" } else { "delta" };
        let client = self.client.clone().expect("pulls only with a client");
        let (sink, result) = {
            let fetch = client.pull(full, sink);
            tokio::pin!(fetch);
            loop {
                tokio::select! {
                    r = &mut fetch => break r,
                    _ = shutdown.changed() => return Err(Stopped),
                    Some(cmd) = self.commands.recv() => {
                        if let Some(reply) = self.owner.handle(cmd) {
                            self.waiting.push(reply);
                        }
                    }
                }
            }
        };
        Ok(self.apply(kind, started, sink, result))
    }

    fn sink(&self, full: bool) -> Sink {
        let mode = if full {
            Mode::Full {
                writer: Box::new(self.owner.writer.fresh()),
                deleted: HashSet::new(),
            }
        } else {
            Mode::Delta {
                upserts: Vec::new(),
                deletes: Vec::new(),
            }
        };
        Sink {
            now_ms: clock::now_ms(),
            filters: self.settings.filters.clone(),
            mode,
            rejected: BTreeMap::new(),
            samples: Vec::new(),
        }
    }

    fn apply(
        &mut self,
        kind: &'static str,
        started: Instant,
        mut sink: Sink,
        result: Result<super::Counts, PullError>,
    ) -> Result<(), PullError> {
        let counts = match result {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(crate::metrics::LAPI_REQUESTS, "kind" => kind, "outcome" => "error")
                    .increment(1);
                return Err(e);
            }
        };
        metrics::counter!(crate::metrics::LAPI_REQUESTS, "kind" => kind, "outcome" => "ok")
            .increment(1);
        self.report_rejections(&mut sink);
        let now = clock::now_secs_precise();
        let (published, removed) = match sink.mode {
            Mode::Full { writer, deleted } => {
                let old = std::mem::replace(&mut self.owner.writer, *writer);
                let removed = self.hold_left_out(old.pending(), &deleted, now);
                // Unbanned decisions stay lifted whatever LAPI still says.
                let lifted = self.owner.apply_overrides(self.held.is_empty(), now);
                if lifted > 0 {
                    debug!("{lifted} decisions kept lifted by local unbans");
                }
                self.owner.writer.compact();
                let snap = self.owner.writer.publish();
                self.owner.persist.replace(snap.clone());
                (snap, removed)
            }
            Mode::Delta {
                mut upserts,
                deletes,
            } => {
                let owner = &mut self.owner;
                upserts.retain(|d| !owner.is_lifted(d.id, d.target));
                let mut removed = 0;
                for &(id, target) in &deletes {
                    removed += usize::from(self.owner.writer.remove(id, target));
                    self.held.remove(&(id, target));
                }
                for d in &upserts {
                    self.held.remove(&(d.id, d.target));
                }
                for d in &upserts {
                    self.owner.writer.insert(d);
                }
                let snap = if upserts.is_empty() && removed == 0 {
                    self.decider.snapshot()
                } else {
                    self.owner.writer.publish()
                };
                self.owner.persist.delta(upserts, &deletes);
                metrics::gauge!(crate::metrics::SYNC_HELD).set(self.held.len() as f64);
                (snap, removed)
            }
        };
        let elapsed = started.elapsed();
        let total = published.len();
        self.stats.pulls_ok.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_success_ms
            .store(clock::now_ms(), Ordering::Relaxed);
        self.stats
            .last_duration_ms
            .store(elapsed.as_millis() as u64, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::LAST_SYNC).set(clock::now_ms() as f64 / 1000.0);
        metrics::histogram!(crate::metrics::SYNC_DURATION, "kind" => kind)
            .record(elapsed.as_secs_f64());
        metrics::gauge!(crate::metrics::SNAPSHOT_DECISIONS).set(total as f64);
        metrics::gauge!(crate::metrics::SNAPSHOT_GENERATION).set(published.generation() as f64);
        if !self.stats.first_sync_done.swap(true, Ordering::Relaxed) {
            info!(
                "[CROWDSEC_STARTUP] first sync done: {total} decisions active ({} received) in {} ms",
                counts.new,
                elapsed.as_millis()
            );
        } else if counts.new + counts.deleted > 0 {
            info!(
                "{kind} sync: {} new, {} deleted ({removed} removed), {total} active, {} ms",
                counts.new,
                counts.deleted,
                elapsed.as_millis()
            );
        }
        Ok(())
    }

    /// After a full pull built the new writer: every unexpired decision of `old` that the
    /// pull left out is put back and held, unless LAPI listed it in `deleted` or the
    /// previous full pull had left it out too (then it is lifted). Returns how many
    /// were lifted.
    fn hold_left_out(
        &mut self,
        old: &Snapshot,
        deleted: &HashSet<(i64, Target)>,
        now: u32,
    ) -> usize {
        let writer = &self.owner.writer;
        let mut keep = Vec::new();
        let mut lifted = 0;
        let mut held = HashSet::new();
        old.for_each(|target, v, meta| {
            let key = (v.id(), target);
            if v.expires_at() <= now || writer.contains(key.0, target) {
                return;
            }
            if deleted.contains(&key) || self.held.contains(&key) {
                lifted += 1;
                return;
            }
            held.insert(key);
            keep.push(Decision {
                id: key.0,
                target,
                type_name: meta.type_name.to_string(),
                origin: meta.origin.to_string(),
                scenario: meta.scenario.to_string(),
                expires_at: v.expires_at(),
            });
        });
        for d in &keep {
            self.owner.writer.insert(d);
        }
        if !held.is_empty() {
            warn!(
                "full pull left out {} decisions still held here: kept until the next pull, \
                 a full one, confirms; e.g. #{} {}",
                held.len(),
                keep[0].id,
                keep[0].target
            );
        }
        if lifted > 0 {
            info!("{lifted} held decisions lifted: LAPI confirmed them gone");
        }
        metrics::gauge!(crate::metrics::SYNC_HELD).set(held.len() as f64);
        self.held = held;
        lifted
    }

    fn report_rejections(&mut self, sink: &mut Sink) {
        for (&why, &n) in &sink.rejected {
            metrics::counter!(crate::metrics::DECISIONS_REJECTED, "reason" => why.as_str())
                .increment(n);
            if why.is_error() {
                self.stats.rejected.fetch_add(n, Ordering::Relaxed);
            } else {
                self.stats.filtered.fetch_add(n, Ordering::Relaxed);
            }
        }
        for (why, value) in sink.samples.drain(..) {
            // Log each bad value once, not at every resync.
            if self.logged_values.len() < 10_000 && self.logged_values.insert(value.clone()) {
                warn!("skipping decision with value {value:?}: {}", why.as_str());
            }
        }
        let errors: u64 = sink
            .rejected
            .iter()
            .filter(|(w, _)| w.is_error())
            .map(|(_, n)| n)
            .sum();
        if errors > 0 {
            warn!("skipped {errors} unusable decisions in this pull (see cerberus_decisions_rejected_total)");
        }
    }
}

/// Exponential backoff with full jitter: between half and all of `min(cap, 1s * 2^(n-1))`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(cap).max(Duration::from_millis(100));
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(30);
        for _ in 0..50 {
            let b1 = backoff(1, cap);
            assert!(
                b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1),
                "{b1:?}"
            );
            let b4 = backoff(4, cap);
            assert!(
                b4 >= Duration::from_secs(4) && b4 <= Duration::from_secs(8),
                "{b4:?}"
            );
            let b20 = backoff(20, cap);
            assert!(b20 >= Duration::from_secs(15) && b20 <= cap, "{b20:?}");
        }
    }
}
