//! The single-IP table: 4096 shards, each a SwissTable (`hashbrown::HashTable`) behind an
//! `Arc`, picked by bits of the key's hash that the shard's own probing does not use.
//!
//! Why shards: publishing a snapshot clones only the vector of shard pointers, and the
//! writer copies only the shards that a delta touches: a 1k delta on a million entries
//! copies about a fifth of the table instead of all of it, and a small delta almost
//! nothing. (An open-addressing table of our own with chunked copy-on-write, tried first,
//! was 2.5x slower per lookup than hashbrown on this machine; the figures are in
//! benches/README.md.)

use super::Verdict;
use hashbrown::HashTable;
use std::sync::Arc;
use std::sync::OnceLock;

const SHARD_BITS: u32 = 12;
const SHARDS: usize = 1 << SHARD_BITS;

/// A key type: an IPv4 (u32) or IPv6 (u128) address.
pub trait Key: Copy + Eq + Default + std::fmt::Debug + Send + Sync + 'static {
    fn mix(self) -> u64;
}

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    // A per-process seed so that nobody can pick addresses that all land in one shard.
    *SEED.get_or_init(rand::random::<u64>)
}

#[inline]
fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Key for u32 {
    #[inline]
    fn mix(self) -> u64 {
        fmix(self as u64 ^ seed())
    }
}

impl Key for u128 {
    #[inline]
    fn mix(self) -> u64 {
        fmix((self as u64) ^ fmix((self >> 64) as u64 ^ seed()))
    }
}

type Shard<K> = HashTable<(K, Verdict)>;

#[derive(Debug, Clone)]
pub struct Table<K: Key> {
    shards: Vec<Arc<Shard<K>>>,
    len: usize,
}

impl<K: Key> Default for Table<K> {
    fn default() -> Self {
        Table {
            shards: Vec::new(),
            len: 0,
        }
    }
}

/// hashbrown probes with the low bits and tags with the top seven: the shard comes from
/// the middle.
#[inline]
fn shard_of(mix: u64) -> usize {
    ((mix >> 32) as usize) & (SHARDS - 1)
}

impl<K: Key> Table<K> {
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn get(&self, k: K) -> Option<&Verdict> {
        if self.len == 0 {
            return None;
        }
        let mix = k.mix();
        self.shards[shard_of(mix)]
            .find(mix, |e| e.0 == k)
            .map(|e| &e.1)
    }

    fn shard_mut(&mut self, mix: u64) -> &mut Shard<K> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect();
        }
        Arc::make_mut(&mut self.shards[shard_of(mix)])
    }

    /// Inserts or replaces the value of `k`.
    pub fn insert(&mut self, k: K, v: Verdict) {
        let mix = k.mix();
        let shard = self.shard_mut(mix);
        match shard.find_mut(mix, |e| e.0 == k) {
            Some(e) => e.1 = v,
            None => {
                shard.insert_unique(mix, (k, v), |e| e.0.mix());
                self.len += 1;
            }
        }
    }

    /// Removes `k`; returns its value.
    pub fn remove(&mut self, k: K) -> Option<Verdict> {
        let mix = k.mix();
        // Look first: a miss must not copy a shared shard.
        self.get(k)?;
        let shard = self.shard_mut(mix);
        let (entry, _) = shard.find_entry(mix, |e| e.0 == k).ok()?.remove();
        self.len -= 1;
        Some(entry.1)
    }

    /// Gives back memory that deletes left unused (after a full sync).
    pub fn compact(&mut self) {
        for shard in &mut self.shards {
            if shard.capacity() > shard.len() * 2 {
                Arc::make_mut(shard).shrink_to_fit(|e| e.0.mix());
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(K, Verdict)) {
        for shard in &self.shards {
            for (k, v) in shard.iter() {
                f(*k, *v);
            }
        }
    }

    /// Bytes held by the shards (buckets and control bytes).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.capacity() * (std::mem::size_of::<(K, Verdict)>() + 1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: i64) -> Verdict {
        Verdict::new(id, 10, 0)
    }

    #[test]
    fn insert_get_remove_against_a_hashmap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut t: Table<u32> = Table::default();
        let mut model = std::collections::HashMap::new();
        for step in 0..200_000 {
            // A small key space forces long runs, wrap-around and many shifts.
            let k: u32 = rng.gen_range(0..3000);
            match rng.gen_range(0..3) {
                0 | 1 => {
                    t.insert(k, v(step));
                    model.insert(k, v(step));
                }
                _ => assert_eq!(t.remove(k), model.remove(&k), "remove {k}"),
            }
            if step % 1000 == 0 {
                assert_eq!(t.len(), model.len());
                for probe in 0..3000u32 {
                    assert_eq!(t.get(probe), model.get(&probe), "get {probe}");
                }
            }
        }
        let mut seen = 0;
        t.for_each(|k, val| {
            assert_eq!(model.get(&k), Some(&val));
            seen += 1;
        });
        assert_eq!(seen, model.len());
        t.compact();
        for probe in 0..3000u32 {
            assert_eq!(t.get(probe), model.get(&probe));
        }
    }

    #[test]
    fn clones_share_untouched_chunks() {
        let mut t: Table<u128> = Table::default();
        for k in 1..10_000u128 {
            t.insert(k << 64, v(k as i64));
        }
        let before = t.clone();
        t.insert(5 << 64, v(-1));
        assert_eq!(before.get(5 << 64), Some(&v(5)));
        assert_eq!(t.get(5 << 64), Some(&v(-1)));
        let shared = t
            .shards
            .iter()
            .zip(&before.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, t.shards.len() - 1, "exactly one shard copied");
        t.insert(0, v(0));
        assert_eq!(t.get(0), Some(&v(0)));
        assert_eq!(t.remove(0), Some(v(0)));
        assert_eq!(t.get(0), None);
    }
}
