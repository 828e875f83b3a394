//! The single-IP table: one large hash map (the base) plus a small overlay of changes.
//!
//! Lookups want one big map: measured here, a lookup in one std `HashMap` of a million
//! entries costs a third to a fifth of one in 4096 copy-on-write shards (each shard adds
//! misses on its header and its own control bytes). Publishing wants small copies: cloning
//! a million-entry map for a 1k delta costs about 50 ms. So a published snapshot shares
//! the base and carries an overlay (key -> new verdict, or a tombstone) that the writer
//! copies on each publish; lookups read the overlay first, only when it is not empty.
//! When the overlay grows past an eighth of the base, the writer folds it into a new base
//! on a background thread and keeps only the changes made since the fold began.
//! While nobody shares the base (a fresh table before its first publish, or a new base
//! before it is published), writes go straight into it.

use super::Verdict;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Below this base size, folding the overlay is done in place at once (a few ms at most).
const FOLD_IN_PLACE_BELOW: usize = 100_000;

/// A key type: an IPv4 (u32) or IPv6 (u128) address.
pub trait Key: Copy + Eq + Hash + Send + Sync + std::fmt::Debug + 'static {}
impl Key for u32 {}
impl Key for u128 {}

#[derive(Debug, Clone)]
pub struct Table<K: Key> {
    base: Arc<Map<K, Verdict>>,
    overlay: Arc<Map<K, Option<Verdict>>>,
    len: usize,
}

impl<K: Key> Default for Table<K> {
    fn default() -> Self {
        Table {
            base: Arc::new(Map::default()),
            overlay: Arc::new(Map::default()),
            len: 0,
        }
    }
}

/// A fold running on a background thread: the overlay as it was when the fold began, and
/// the new base being built from it.
pub struct Fold<K: Key> {
    overlay_then: Arc<Map<K, Option<Verdict>>>,
    thread: std::thread::JoinHandle<Map<K, Verdict>>,
}

impl<K: Key> Table<K> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The shared base map (for the segment export: its identity tells a new base).
    pub(super) fn base(&self) -> &Arc<Map<K, Verdict>> {
        &self.base
    }

    /// The changes over the base: a new value, or `None` for a removed key.
    pub(super) fn overlay(&self) -> &Map<K, Option<Verdict>> {
        &self.overlay
    }

    #[inline]
    pub fn get(&self, k: K) -> Option<&Verdict> {
        if !self.overlay.is_empty() {
            if let Some(slot) = self.overlay.get(&k) {
                return slot.as_ref();
            }
        }
        self.base.get(&k)
    }

    /// Inserts or replaces the value of `k`.
    pub fn insert(&mut self, k: K, v: Verdict) {
        if self.get(k).is_none() {
            self.len += 1;
        }
        if let Some(base) = Arc::get_mut(&mut self.base) {
            base.insert(k, v);
            if self.overlay.contains_key(&k) {
                Arc::make_mut(&mut self.overlay).remove(&k);
            }
        } else {
            Arc::make_mut(&mut self.overlay).insert(k, Some(v));
        }
    }

    /// Removes `k`; returns its value.
    pub fn remove(&mut self, k: K) -> Option<Verdict> {
        let old = *self.get(k)?;
        self.len -= 1;
        if let Some(base) = Arc::get_mut(&mut self.base) {
            base.remove(&k);
            if self.overlay.contains_key(&k) {
                Arc::make_mut(&mut self.overlay).remove(&k);
            }
        } else {
            // A tombstone even when the base lacks `k`: a fold in progress may be adding it.
            Arc::make_mut(&mut self.overlay).insert(k, None);
        }
        Some(old)
    }

    /// Every entry, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(K, Verdict)) {
        for (k, v) in self.base.iter() {
            if !self.overlay.contains_key(k) {
                f(*k, *v);
            }
        }
        for (k, slot) in self.overlay.iter() {
            if let Some(v) = slot {
                f(*k, *v);
            }
        }
    }

    /// Folds the overlay into the base now (copying the base if it is shared) and gives
    /// back unused capacity. Not while a fold runs: `finish_fold` would drop what this
    /// folded (the writer finishes a running fold first).
    pub fn compact(&mut self) {
        if !self.overlay.is_empty() {
            let overlay = std::mem::take(&mut self.overlay);
            apply(Arc::make_mut(&mut self.base), &overlay);
        }
        Arc::make_mut(&mut self.base).shrink_to_fit();
    }

    /// Called before each publish: installs a finished fold, and starts one (or folds in
    /// place, for a small base) when the overlay has grown past an eighth of the base.
    pub fn maintain(&mut self, fold: &mut Option<Fold<K>>) {
        if fold.as_ref().is_some_and(|f| f.thread.is_finished()) {
            self.finish_fold_now(fold);
        }
        if fold.is_some() || self.overlay.len() <= (self.base.len() / 8).max(4096) {
            return;
        }
        if self.base.len() < FOLD_IN_PLACE_BELOW {
            self.compact();
        } else {
            *fold = Some(self.start_fold());
        }
    }

    fn start_fold(&self) -> Fold<K> {
        let (base, overlay) = (self.base.clone(), self.overlay.clone());
        let overlay_then = overlay.clone();
        let thread = std::thread::Builder::new()
            .name("cerberus-fold".into())
            .spawn(move || {
                let mut merged = (*base).clone();
                apply(&mut merged, &overlay);
                merged
            })
            .expect("spawn fold thread");
        Fold {
            overlay_then,
            thread,
        }
    }

    /// The new base holds the overlay as it was when the fold began: keep only the
    /// entries that changed since.
    pub fn finish_fold_now(&mut self, fold: &mut Option<Fold<K>>) {
        if let Some(done) = fold.take() {
            let merged = done.thread.join().expect("fold thread panicked");
            self.finish_fold(merged, &done.overlay_then);
        }
    }

    fn finish_fold(&mut self, merged: Map<K, Verdict>, overlay_then: &Map<K, Option<Verdict>>) {
        let mut rest = (*self.overlay).clone();
        rest.retain(|k, slot| overlay_then.get(k) != Some(slot));
        self.base = Arc::new(merged);
        self.overlay = Arc::new(rest);
    }

    /// Bytes held by the maps (buckets and control bytes, estimated from capacity).
    pub fn heap_bytes(&self) -> usize {
        self.base.capacity() * (std::mem::size_of::<(K, Verdict)>() + 1)
            + self.overlay.capacity() * (std::mem::size_of::<(K, Option<Verdict>)>() + 1)
    }

    #[cfg(test)]
    fn overlay_len(&self) -> usize {
        self.overlay.len()
    }
}

fn apply<K: Key>(base: &mut Map<K, Verdict>, overlay: &Map<K, Option<Verdict>>) {
    for (k, slot) in overlay {
        match slot {
            Some(v) => base.insert(*k, *v),
            None => base.remove(k),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn v(id: i64) -> Verdict {
        Verdict::new(id, 10, 0)
    }

    /// Random inserts and removes, with publishes (clones that share the base), folds in
    /// place, and background folds that finish while more changes arrive: the table always
    /// agrees with a plain map, and published clones never change.
    #[test]
    fn agrees_with_a_hashmap_through_publishes_and_folds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut t: Table<u32> = Table::default();
        let mut model: std::collections::HashMap<u32, Verdict> = Default::default();
        let mut published: Vec<(Table<u32>, std::collections::HashMap<u32, Verdict>)> = Vec::new();
        let mut fold: Option<Fold<u32>> = None;
        for step in 0..60_000i64 {
            let k: u32 = rng.gen_range(0..5000);
            match rng.gen_range(0..10) {
                0..=5 => {
                    t.insert(k, v(step));
                    model.insert(k, v(step));
                }
                6..=8 => assert_eq!(t.remove(k), model.remove(&k), "remove {k}"),
                _ => {
                    published.push((t.clone(), model.clone()));
                    if published.len() > 4 {
                        published.remove(0);
                    }
                    match rng.gen_range(0..4) {
                        0 if fold.is_none() => t.compact(),
                        1 if fold.is_none() => fold = Some(t.start_fold()),
                        2 => {
                            if let Some(f) = fold.take() {
                                let merged = f.thread.join().unwrap();
                                t.finish_fold(merged, &f.overlay_then);
                            }
                        }
                        _ => t.maintain(&mut fold),
                    }
                }
            }
            assert_eq!(t.len(), model.len());
            if step % 2000 == 0 {
                for probe in 0..5000u32 {
                    assert_eq!(t.get(probe), model.get(&probe), "get {probe} at {step}");
                }
                for (snap, then) in &published {
                    for probe in (0..5000u32).step_by(7) {
                        assert_eq!(snap.get(probe), then.get(&probe), "published copy changed");
                    }
                }
            }
        }
        let mut seen = std::collections::HashMap::new();
        t.for_each(|k, val| {
            assert!(seen.insert(k, val).is_none(), "{k} listed twice");
        });
        assert_eq!(seen, model);
        t.compact();
        assert_eq!(t.overlay_len(), 0);
        for probe in 0..5000u32 {
            assert_eq!(t.get(probe), model.get(&probe));
        }
    }

    #[test]
    fn writes_go_to_the_base_until_it_is_shared() {
        let mut t: Table<u128> = Table::default();
        for k in 0..1000u128 {
            t.insert(k, v(k as i64));
        }
        assert_eq!(t.overlay_len(), 0, "unshared: straight into the base");
        let published = t.clone();
        t.insert(5, v(-1));
        t.remove(6);
        assert_eq!(t.overlay_len(), 2, "shared: into the overlay");
        assert_eq!(published.get(5), Some(&v(5)));
        assert_eq!(published.get(6), Some(&v(6)));
        assert_eq!(t.get(5), Some(&v(-1)));
        assert_eq!(t.get(6), None);
        assert_eq!(t.len(), 999);
    }
}
