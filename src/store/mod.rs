//! The decision store, free of I/O: the immutable [`Snapshot`] that lookups read, the
//! [`Writer`] that derives the next snapshot from decisions and deletes, and the
//! [`Decider`] that the hot path asks (snapshot + protection switch + LAPI-outage policy).
//!
//! Precedence, pinned by tests: among all unexpired decisions covering an address (its own
//! and those of every range containing it), the strongest remediation wins
//! (`ban > captcha > throttle > other`), and among equals the one that expires last.

mod export;
pub use export::IpKey;
mod ranges;
mod table;

use crate::decision::{normalize_ip, Decision, Remediation, Target};
use ahash::RandomState;
use arc_swap::ArcSwap;
use ranges::{RangeInput, RangeTable};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use table::{Fold, Key, Table};

type Map<K, V> = HashMap<K, V, RandomState>;

/// A decision as the snapshot keeps it: 16 bytes, 4-aligned, so a million single IPs fit
/// in about 42 MB of hash table. The strings live once in [`Meta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    id_lo: u32,
    id_hi: u32,
    expires: u32,
    /// Index into the snapshot's metas; the top bit marks a key with several decisions.
    meta: u32,
}

const MORE: u32 = 1 << 31;

impl Verdict {
    fn new(id: i64, expires: u32, meta: u32) -> Verdict {
        Verdict {
            id_lo: id as u64 as u32,
            id_hi: ((id as u64) >> 32) as u32,
            expires,
            meta,
        }
    }

    pub fn id(&self) -> i64 {
        (((self.id_hi as u64) << 32) | self.id_lo as u64) as i64
    }

    pub fn expires_at(&self) -> u32 {
        self.expires
    }

    fn meta_index(&self) -> usize {
        (self.meta & !MORE) as usize
    }

    fn has_more(&self) -> bool {
        self.meta & MORE != 0
    }

    fn with_more(mut self, more: bool) -> Verdict {
        self.meta = (self.meta & !MORE) | if more { MORE } else { 0 };
        self
    }
}

/// The strings and the remediation shared by many decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    pub remediation: Remediation,
    pub type_name: Arc<str>,
    pub origin: Arc<str>,
    pub scenario: Arc<str>,
}

/// The answer for one address: the decision that applies.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub verdict: Verdict,
    pub meta: &'a Meta,
}

impl Hit<'_> {
    pub fn remediation(&self) -> Remediation {
        self.meta.remediation
    }
}

/// An immutable view of every decision. Cheap to clone (each part is behind an `Arc`), and
/// the writer copies a part only when it changes it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    v4: Table<u32>,
    v6: Table<u128>,
    multi4: Arc<Map<u32, Arc<[Verdict]>>>,
    multi6: Arc<Map<u128, Arc<[Verdict]>>>,
    ranges: Arc<RangeTable>,
    /// The range decisions the table was built from (for listing and persistence).
    range_list: Arc<Vec<(Target, Verdict)>>,
    metas: Arc<Vec<Meta>>,
    generation: u64,
}

impl Snapshot {
    /// The decision that applies to `ip` at unix second `now`, if any.
    #[inline]
    pub fn lookup(&self, ip: IpAddr, now: u32) -> Option<Hit<'_>> {
        let best = match normalize_ip(ip) {
            IpAddr::V4(a) => {
                let key = u32::from(a);
                let exact = self
                    .v4
                    .get(key)
                    .and_then(|v| self.live_exact(*v, now, || self.multi4.get(&key)));
                let range = if self.ranges.is_empty() {
                    None
                } else {
                    first_live(self.ranges.find_v4(key), now)
                };
                self.stronger(exact, range)
            }
            IpAddr::V6(a) => {
                let key = u128::from(a);
                let exact = self
                    .v6
                    .get(key)
                    .and_then(|v| self.live_exact(*v, now, || self.multi6.get(&key)));
                let range = if self.ranges.is_empty() {
                    None
                } else {
                    first_live(self.ranges.find_v6(key), now)
                };
                self.stronger(exact, range)
            }
        };
        best.map(|verdict| Hit {
            verdict,
            meta: &self.metas[verdict.meta_index()],
        })
    }

    #[inline]
    fn live_exact<'s>(
        &'s self,
        v: Verdict,
        now: u32,
        more: impl FnOnce() -> Option<&'s Arc<[Verdict]>>,
    ) -> Option<Verdict> {
        if v.expires > now {
            Some(v)
        } else if v.has_more() {
            more().and_then(|list| first_live(list, now))
        } else {
            None
        }
    }

    #[inline]
    fn stronger(&self, a: Option<Verdict>, b: Option<Verdict>) -> Option<Verdict> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if self.rank(&b) > self.rank(&a) { b } else { a }),
            (a, None) => a,
            (None, b) => b,
        }
    }

    #[inline]
    fn rank(&self, v: &Verdict) -> (Remediation, u32) {
        (self.metas[v.meta_index()].remediation, v.expires)
    }

    /// Bytes held by the single-IP tables (the bulk of the memory).
    pub fn table_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes()
    }

    /// Incremented by every publish.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of decisions held (expired ones included until purged).
    pub fn len(&self) -> usize {
        let multi_extra: usize = self.multi4.values().map(|l| l.len() - 1).sum::<usize>()
            + self.multi6.values().map(|l| l.len() - 1).sum::<usize>();
        self.v4.len() + self.v6.len() + multi_extra + self.range_list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every decision held, as full records (for persistence and the admin API).
    pub fn for_each<'s>(&'s self, mut f: impl FnMut(Target, Verdict, &'s Meta)) {
        let mut emit = |target: Target, v: Verdict| f(target, v, &self.metas[v.meta_index()]);
        self.v4.for_each(|k, v| {
            let t = Target::V4 {
                addr: k,
                prefix: 32,
            };
            match (v.has_more(), self.multi4.get(&k)) {
                (true, Some(list)) => list.iter().for_each(|v| emit(t, *v)),
                _ => emit(t, v),
            }
        });
        self.v6.for_each(|k, v| {
            let t = Target::V6 {
                addr: k,
                prefix: 128,
            };
            match (v.has_more(), self.multi6.get(&k)) {
                (true, Some(list)) => list.iter().for_each(|v| emit(t, *v)),
                _ => emit(t, v),
            }
        });
        for &(t, v) in self.range_list.iter() {
            emit(t, v);
        }
    }
}

impl Snapshot {
    /// Every decision whose target contains `target` (the target itself, and every range
    /// around it), expired or not: what an unban of `target` lifts. Mirrors LAPI's
    /// `DELETE /v1/decisions?ip=` / `?range=`, which remove the decisions containing the
    /// value.
    pub fn covering(&self, target: Target) -> Vec<(Target, Verdict, &Meta)> {
        let mut out = Vec::new();
        let mut push = |t: Target, v: Verdict| out.push((t, v, &self.metas[v.meta_index()]));
        match target {
            Target::V4 { addr, prefix: 32 } => {
                if let Some(&v) = self.v4.get(addr) {
                    match (v.has_more(), self.multi4.get(&addr)) {
                        (true, Some(list)) => list.iter().for_each(|v| push(target, *v)),
                        _ => push(target, v),
                    }
                }
            }
            Target::V6 { addr, prefix: 128 } => {
                if let Some(&v) = self.v6.get(addr) {
                    match (v.has_more(), self.multi6.get(&addr)) {
                        (true, Some(list)) => list.iter().for_each(|v| push(target, *v)),
                        _ => push(target, v),
                    }
                }
            }
            _ => {}
        }
        for &(t, v) in self.range_list.iter() {
            if t.contains_target(target) {
                push(t, v);
            }
        }
        out
    }
}

fn first_live(list: &[Verdict], now: u32) -> Option<Verdict> {
    list.iter().find(|v| v.expires > now).copied()
}

/// Derives snapshots. Owned by one task (the sync loop); publishing is one atomic swap.
pub struct Writer {
    next: Snapshot,
    fold4: Option<Fold<u32>>,
    fold6: Option<Fold<u128>>,
    ranges: BTreeMap<(Target, i64), Verdict>,
    ranges_dirty: bool,
    meta_ids: HashMap<Meta, u32>,
    published: Arc<Published>,
}

/// Where snapshots are published, and the hook called after each publish (the segment
/// writer's wake-up), once set. Shared by a decider and all its writers.
#[derive(Default)]
pub struct Published {
    snapshot: ArcSwap<Snapshot>,
    hook: OnceLock<PublishHook>,
}

/// What [`Decider::on_publish`] registers: called on the publishing thread, so it must
/// only signal (never block or do the work itself).
pub type PublishHook = Box<dyn Fn() + Send + Sync>;

impl Writer {
    pub fn new(published: Arc<Published>) -> Writer {
        Writer {
            next: Snapshot::default(),
            fold4: None,
            fold6: None,
            ranges: BTreeMap::new(),
            ranges_dirty: false,
            meta_ids: HashMap::new(),
            published,
        }
    }

    /// The snapshot being prepared (not yet published).
    pub fn pending(&self) -> &Snapshot {
        &self.next
    }

    fn meta_id(&mut self, d: &Decision) -> u32 {
        let meta = Meta {
            remediation: d.remediation(),
            type_name: d.type_name.as_str().into(),
            origin: d.origin.as_str().into(),
            scenario: d.scenario.as_str().into(),
        };
        if let Some(&id) = self.meta_ids.get(&meta) {
            return id;
        }
        let metas = Arc::make_mut(&mut self.next.metas);
        let id = metas.len() as u32;
        assert!(id < MORE, "too many distinct (type, origin, scenario)");
        metas.push(meta.clone());
        self.meta_ids.insert(meta, id);
        id
    }

    /// Adds a decision; one with the same id on the same target is replaced.
    pub fn insert(&mut self, d: &Decision) {
        let meta = self.meta_id(d);
        let v = Verdict::new(d.id, d.expires_at, meta);
        let metas = &self.next.metas;
        match d.target {
            Target::V4 { addr, prefix: 32 } => {
                upsert(&mut self.next.v4, &mut self.next.multi4, addr, v, metas)
            }
            Target::V6 { addr, prefix: 128 } => {
                upsert(&mut self.next.v6, &mut self.next.multi6, addr, v, metas)
            }
            range => {
                self.ranges.insert((range, d.id), v);
                self.ranges_dirty = true;
            }
        }
    }

    /// Removes the decision `id` on `target`; others on the same target stay. Returns
    /// whether it was there.
    pub fn remove(&mut self, id: i64, target: Target) -> bool {
        let metas = &self.next.metas;
        match target {
            Target::V4 { addr, prefix: 32 } => {
                remove_id(&mut self.next.v4, &mut self.next.multi4, addr, id, metas)
            }
            Target::V6 { addr, prefix: 128 } => {
                remove_id(&mut self.next.v6, &mut self.next.multi6, addr, id, metas)
            }
            range => {
                let removed = self.ranges.remove(&(range, id)).is_some();
                self.ranges_dirty |= removed;
                removed
            }
        }
    }

    /// Whether the decision `id` on `target` is held (pending changes included).
    pub fn contains(&self, id: i64, target: Target) -> bool {
        fn has<K: Key>(map: &Table<K>, multi: &Map<K, Arc<[Verdict]>>, key: K, id: i64) -> bool {
            match map.get(key) {
                None => false,
                Some(v) if v.has_more() => multi
                    .get(&key)
                    .is_some_and(|l| l.iter().any(|e| e.id() == id)),
                Some(v) => v.id() == id,
            }
        }
        match target {
            Target::V4 { addr, prefix: 32 } => has(&self.next.v4, &self.next.multi4, addr, id),
            Target::V6 { addr, prefix: 128 } => has(&self.next.v6, &self.next.multi6, addr, id),
            range => self.ranges.contains_key(&(range, id)),
        }
    }

    /// Drops every decision whose expiry is at or before `now`; returns how many.
    pub fn purge_expired(&mut self, now: u32) -> usize {
        let mut expired: Vec<(i64, Target)> = Vec::new();
        self.next.for_each(|t, v, _| {
            if v.expires <= now && t.is_single() {
                expired.push((v.id(), t));
            }
        });
        for (&(t, id), v) in &self.ranges {
            if v.expires <= now {
                expired.push((id, t));
            }
        }
        for &(id, t) in &expired {
            self.remove(id, t);
        }
        expired.len()
    }

    /// Starts a fresh, empty writer publishing into the same place, continuing this one's
    /// generation count: a full resync builds into it and replaces this one on success.
    pub fn fresh(&self) -> Writer {
        let mut w = Writer::new(self.published.clone());
        w.next.generation = self.next.generation;
        w
    }

    /// Folds pending changes into the single-IP tables and gives back unused memory
    /// (after a full sync, before the first publish).
    pub fn compact(&mut self) {
        self.next.v4.finish_fold_now(&mut self.fold4);
        self.next.v6.finish_fold_now(&mut self.fold6);
        self.next.v4.compact();
        self.next.v6.compact();
    }

    /// Makes every change since the last publish visible to lookups, atomically.
    pub fn publish(&mut self) -> Arc<Snapshot> {
        if self.ranges_dirty {
            let inputs: Vec<RangeInput> = self
                .ranges
                .iter()
                .map(|(&(target, _), &verdict)| range_input(target, verdict))
                .collect();
            let metas = self.next.metas.clone();
            self.next.ranges = Arc::new(RangeTable::build(&inputs, |list| {
                sort_strongest_first(list, &metas)
            }));
            self.next.range_list =
                Arc::new(self.ranges.iter().map(|(&(t, _), &v)| (t, v)).collect());
            self.ranges_dirty = false;
        }
        self.next.v4.maintain(&mut self.fold4);
        self.next.v6.maintain(&mut self.fold6);
        // Strictly above whatever was published last, also when another writer (the one
        // commands used while a full pull built this one) published meanwhile.
        self.next.generation = self
            .next
            .generation
            .max(self.published.snapshot.load().generation)
            + 1;
        let snap = Arc::new(self.next.clone());
        self.published.snapshot.store(snap.clone());
        if let Some(hook) = self.published.hook.get() {
            hook();
        }
        snap
    }
}

fn range_input(target: Target, verdict: Verdict) -> RangeInput {
    match target {
        Target::V4 { addr, prefix } => {
            let span = if prefix == 0 {
                u32::MAX
            } else {
                (1u32 << (32 - prefix)) - 1
            };
            RangeInput {
                v6: false,
                first: addr as u128,
                last: (addr | span) as u128,
                verdict,
            }
        }
        Target::V6 { addr, prefix } => {
            let span = if prefix == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - prefix)) - 1
            };
            RangeInput {
                v6: true,
                first: addr,
                last: addr | span,
                verdict,
            }
        }
    }
}

fn sort_strongest_first(list: &mut [Verdict], metas: &[Meta]) {
    list.sort_unstable_by(|a, b| {
        let ra = (metas[a.meta_index()].remediation, a.expires, a.id());
        let rb = (metas[b.meta_index()].remediation, b.expires, b.id());
        rb.cmp(&ra)
    });
}

fn upsert<K: Key>(
    map: &mut Table<K>,
    multi: &mut Arc<Map<K, Arc<[Verdict]>>>,
    key: K,
    v: Verdict,
    metas: &[Meta],
) {
    let v = v.with_more(false);
    let existing = match map.get(key) {
        None => {
            map.insert(key, v);
            return;
        }
        Some(e) => *e,
    };
    let mut list: Vec<Verdict> = if existing.has_more() {
        multi.get(&key).map(|l| l.to_vec()).unwrap_or_default()
    } else {
        vec![existing]
    };
    list.retain(|e| e.id() != v.id());
    list.push(v);
    store_list(map, multi, key, list, metas);
}

fn remove_id<K: Key>(
    map: &mut Table<K>,
    multi: &mut Arc<Map<K, Arc<[Verdict]>>>,
    key: K,
    id: i64,
    metas: &[Meta],
) -> bool {
    let Some(&existing) = map.get(key) else {
        return false;
    };
    let mut list: Vec<Verdict> = if existing.has_more() {
        multi.get(&key).map(|l| l.to_vec()).unwrap_or_default()
    } else {
        vec![existing]
    };
    let before = list.len();
    list.retain(|e| e.id() != id);
    if list.len() == before {
        return false;
    }
    store_list(map, multi, key, list, metas);
    true
}

/// Stores a key's decisions: the strongest inline, all of them in `multi` when several.
fn store_list<K: Key>(
    map: &mut Table<K>,
    multi: &mut Arc<Map<K, Arc<[Verdict]>>>,
    key: K,
    mut list: Vec<Verdict>,
    metas: &[Meta],
) {
    let had_multi = map.get(key).is_some_and(|v| v.has_more());
    match list.len() {
        0 => {
            map.remove(key);
        }
        1 => {
            map.insert(key, list[0].with_more(false));
        }
        _ => {
            for v in list.iter_mut() {
                *v = v.with_more(false);
            }
            sort_strongest_first(&mut list, metas);
            map.insert(key, list[0].with_more(true));
            Arc::make_mut(multi).insert(key, list.into());
            return;
        }
    }
    if had_multi {
        Arc::make_mut(multi).remove(&key);
    }
}

/// What happens to lookups while LAPI cannot be reached for longer than `stale_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnreachablePolicy {
    /// Keep enforcing the known, unexpired decisions (default).
    Keep,
    /// Allow everything.
    Open,
    /// Ban everything.
    Closed,
}

/// How an answer came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No decision covers the address.
    None,
    /// A decision applies.
    Decision,
    /// Protection is switched off: allowed whatever the decisions say.
    Bypassed,
    /// LAPI is stale and the policy is `open`.
    FailOpen,
    /// LAPI is stale and the policy is `closed`.
    FailClosed,
}

/// An owned answer, for callers outside the hot path (CLI, admin API, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub remediation: Option<Remediation>,
    pub source: Source,
    pub id: Option<i64>,
    pub type_name: Option<Arc<str>>,
    pub origin: Option<Arc<str>>,
    pub scenario: Option<Arc<str>>,
    pub expires_at: Option<u32>,
}

impl Answer {
    fn plain(source: Source, remediation: Option<Remediation>) -> Answer {
        Answer {
            remediation,
            source,
            id: None,
            type_name: None,
            origin: None,
            scenario: None,
            expires_at: None,
        }
    }

    /// True when the client may pass.
    pub fn allows(&self) -> bool {
        self.remediation.is_none()
    }
}

/// The hot path's entry: the published snapshot, the protection switch and the outage
/// policy. Every read is lock-free.
pub struct Decider {
    snapshot: Arc<Published>,
    enabled: AtomicBool,
    /// 0: normal, 1: fail open, 2: fail closed (set by the sync loop when LAPI is stale).
    outage: AtomicU8,
    lookups: AtomicU64,
    /// What the doors did, for the usage metrics pushed to LAPI.
    usage: crate::usage::Usage,
    /// Tells deciders apart (caches keyed by snapshot generation).
    id: u64,
}

static NEXT_DECIDER_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Decider {
    fn default() -> Self {
        Decider::new()
    }
}

impl Decider {
    pub fn new() -> Decider {
        Decider {
            snapshot: Arc::default(),
            enabled: AtomicBool::new(true),
            outage: AtomicU8::new(0),
            lookups: AtomicU64::new(0),
            usage: crate::usage::Usage::default(),
            id: NEXT_DECIDER_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The doors' counters for the usage metrics (see [`crate::usage`]).
    #[inline]
    pub fn usage(&self) -> &crate::usage::Usage {
        &self.usage
    }

    /// A writer publishing into this decider.
    pub fn writer(&self) -> Writer {
        Writer::new(self.snapshot.clone())
    }

    /// Registers the one hook called after every publish of this decider's writers
    /// (also of writers made before). Returns false when one is already set.
    pub fn on_publish(&self, hook: PublishHook) -> bool {
        self.snapshot.hook.set(hook).is_ok()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.snapshot.load_full()
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Called by the sync loop: `Some(policy)` while LAPI is stale, `None` once it is back.
    pub fn set_outage(&self, policy: Option<UnreachablePolicy>) {
        let code = match policy {
            None | Some(UnreachablePolicy::Keep) => 0,
            Some(UnreachablePolicy::Open) => 1,
            Some(UnreachablePolicy::Closed) => 2,
        };
        self.outage.store(code, Ordering::Relaxed);
    }

    pub fn outage(&self) -> Option<UnreachablePolicy> {
        match self.outage.load(Ordering::Relaxed) {
            1 => Some(UnreachablePolicy::Open),
            2 => Some(UnreachablePolicy::Closed),
            _ => None,
        }
    }

    /// Total lookups answered.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Answers for `ip` at unix second `now`, handing `f` a borrowed view (no allocation,
    /// no reference-count traffic): `f(source, hit)`.
    #[inline]
    pub fn decide<R>(
        &self,
        ip: IpAddr,
        now: u32,
        f: impl FnOnce(Source, Option<Hit<'_>>) -> R,
    ) -> R {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if !self.enabled.load(Ordering::Relaxed) {
            return f(Source::Bypassed, None);
        }
        match self.outage.load(Ordering::Relaxed) {
            1 => return f(Source::FailOpen, None),
            2 => return f(Source::FailClosed, None),
            _ => {}
        }
        let snap = self.snapshot.snapshot.load();
        match snap.lookup(ip, now) {
            Some(hit) => f(Source::Decision, Some(hit)),
            None => f(Source::None, None),
        }
    }

    /// An owned answer for `ip` now.
    pub fn answer(&self, ip: IpAddr) -> Answer {
        self.answer_at(ip, crate::clock::now_secs_precise())
    }

    pub fn answer_at(&self, ip: IpAddr, now: u32) -> Answer {
        self.decide(ip, now, |source, hit| match (source, hit) {
            (Source::FailClosed, _) => Answer::plain(source, Some(Remediation::Ban)),
            (_, Some(hit)) => Answer {
                remediation: Some(hit.remediation()),
                source,
                id: Some(hit.verdict.id()),
                type_name: Some(hit.meta.type_name.clone()),
                origin: Some(hit.meta.origin.clone()),
                scenario: Some(hit.meta.scenario.clone()),
                expires_at: Some(hit.verdict.expires_at()),
            },
            (_, None) => Answer::plain(source, None),
        })
    }
}

#[cfg(test)]
mod tests;
