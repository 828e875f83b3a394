//! Range decisions flattened into sorted, disjoint intervals: a lookup is one binary search
//! (IPv4 narrows it first with a table indexed by the top 16 bits), whatever the nesting.

use super::Verdict;

const NONE: u32 = u32::MAX;

/// One family's intervals: `starts[i]` opens interval i, which runs until `starts[i + 1]`;
/// `sets[i]` names its verdict list (or NONE where no range covers it).
#[derive(Debug, Default, Clone)]
struct Intervals<A> {
    starts: Vec<A>,
    sets: Vec<u32>,
}

/// Every range decision of a snapshot, ready for lookups.
#[derive(Debug, Default, Clone)]
pub struct RangeTable {
    v4: Intervals<u32>,
    /// `v4_bucket[h]` = number of v4 interval starts below `h << 16`; 65537 entries.
    v4_bucket: Vec<u32>,
    v6: Intervals<u128>,
    /// Verdict lists, each ordered strongest first: list k is `items[offsets[k]..offsets[k+1]]`.
    offsets: Vec<u32>,
    items: Vec<Verdict>,
    count: usize,
}

/// A range decision as the builder takes it: inclusive first and last address.
#[derive(Debug, Clone, Copy)]
pub struct RangeInput {
    pub v6: bool,
    pub first: u128,
    pub last: u128,
    pub verdict: Verdict,
}

impl RangeTable {
    /// Builds the table; `order` sorts a verdict list strongest first.
    pub fn build(inputs: &[RangeInput], order: impl Fn(&mut Vec<Verdict>)) -> RangeTable {
        let mut table = RangeTable {
            offsets: vec![0],
            count: inputs.len(),
            ..RangeTable::default()
        };
        let mut interned: ahash::AHashMap<Vec<Verdict>, u32> = ahash::AHashMap::new();
        for v6 in [false, true] {
            let family: Vec<&RangeInput> = inputs.iter().filter(|r| r.v6 == v6).collect();
            let (starts, sets) = sweep(&family, |list| {
                let mut list = list;
                order(&mut list);
                *interned.entry(list.clone()).or_insert_with(|| {
                    table.items.extend_from_slice(&list);
                    table.offsets.push(table.items.len() as u32);
                    (table.offsets.len() - 2) as u32
                })
            });
            if v6 {
                table.v6 = Intervals { starts, sets };
            } else {
                // Starts past u32::MAX only occur as the end of a range that reaches
                // 255.255.255.255; nothing follows it.
                let keep = starts
                    .iter()
                    .take_while(|&&s| s <= u32::MAX as u128)
                    .count();
                table.v4 = Intervals {
                    starts: starts[..keep].iter().map(|&s| s as u32).collect(),
                    sets: sets[..keep].to_vec(),
                };
            }
        }
        if !table.v4.starts.is_empty() {
            let starts = &table.v4.starts;
            table.v4_bucket = (0..=65536u64)
                .map(|h| starts.partition_point(|&s| (s as u64) < (h << 16)) as u32)
                .collect();
        }
        table
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The verdicts of every range covering `addr`, strongest first (empty when none).
    #[inline]
    pub fn find_v4(&self, addr: u32) -> &[Verdict] {
        if self.v4.starts.is_empty() {
            return &[];
        }
        let h = (addr >> 16) as usize;
        let lo = self.v4_bucket[h] as usize;
        let hi = self.v4_bucket[h + 1] as usize;
        let idx = lo + self.v4.starts[lo..hi].partition_point(|&s| s <= addr);
        if idx == 0 {
            return &[];
        }
        self.list(self.v4.sets[idx - 1])
    }

    #[inline]
    pub fn find_v6(&self, addr: u128) -> &[Verdict] {
        let idx = self.v6.starts.partition_point(|&s| s <= addr);
        if idx == 0 {
            return &[];
        }
        self.list(self.v6.sets[idx - 1])
    }

    #[inline]
    fn list(&self, set: u32) -> &[Verdict] {
        if set == NONE {
            return &[];
        }
        let k = set as usize;
        &self.items[self.offsets[k] as usize..self.offsets[k + 1] as usize]
    }
}

/// Sweeps the boundaries of `ranges` in address order and emits, for each elementary
/// interval, its start and the interned id of the verdicts covering it.
fn sweep(
    ranges: &[&RangeInput],
    mut intern: impl FnMut(Vec<Verdict>) -> u32,
) -> (Vec<u128>, Vec<u32>) {
    // (position, +1 open / -1 close, range index); a close at last+1 is None past u128::MAX.
    let mut events: Vec<(u128, bool, usize)> = Vec::with_capacity(ranges.len() * 2);
    for (i, r) in ranges.iter().enumerate() {
        events.push((r.first, true, i));
        if let Some(end) = r.last.checked_add(1) {
            events.push((end, false, i));
        }
    }
    events.sort_unstable_by_key(|&(pos, open, i)| (pos, open, i));
    let mut active: Vec<usize> = Vec::new();
    let mut starts = Vec::new();
    let mut sets = Vec::new();
    let mut k = 0;
    while k < events.len() {
        let pos = events[k].0;
        while k < events.len() && events[k].0 == pos {
            let (_, open, i) = events[k];
            if open {
                active.push(i);
            } else if let Some(p) = active.iter().position(|&a| a == i) {
                active.swap_remove(p);
            }
            k += 1;
        }
        let set = if active.is_empty() {
            NONE
        } else {
            intern(active.iter().map(|&i| ranges[i].verdict).collect())
        };
        // Merge with the previous interval when nothing changed.
        if sets.last() != Some(&set) {
            starts.push(pos);
            sets.push(set);
        }
    }
    (starts, sets)
}
