//! The segment writer: verdict lists, metas and strings collected, then laid out as
//! `SNAPSHOT.md` says (open-addressing tables, ranges cut into disjoint intervals).

use super::*;
use crate::codec::truncate_utf8;
use crate::Remediation;
use std::collections::{BTreeSet, HashMap};

/// One decision as a segment keeps it: its expiry and the index of its meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub expires: u32,
    pub meta: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pos {
    At(u128),
    End,
}

/// Collects one segment's content; [`Builder::finish`] lays it out.
pub struct Builder {
    kind: u32,
    generation: u64,
    base_generation: u64,
    flags: u32,
    outage: Outage,
    strings: Vec<u8>,
    metas: Vec<[u8; 16]>,
    meta_rank: Vec<u8>,
    meta_ids: HashMap<(u8, String, String, String), u32>,
    verdicts: Vec<[u32; 2]>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u32)>,
    r4: Vec<(u128, u128, Verdict)>,
    r6: Vec<(u128, u128, Verdict)>,
}

impl Builder {
    /// A base (`KIND_BASE`, `base_generation == generation`) or an overlay over the
    /// base of `base_generation`.
    pub fn new(kind: u32, generation: u64, base_generation: u64) -> Builder {
        Builder {
            kind,
            generation,
            base_generation,
            flags: 0,
            outage: Outage::None,
            strings: Vec::new(),
            metas: Vec::new(),
            meta_rank: Vec::new(),
            meta_ids: HashMap::new(),
            verdicts: Vec::new(),
            v4: Vec::new(),
            v6: Vec::new(),
            r4: Vec::new(),
            r6: Vec::new(),
        }
    }

    /// The protection switch and the LAPI outage state, for the header.
    pub fn set_state(&mut self, disabled: bool, outage: Outage) {
        if disabled {
            self.flags |= FLAG_DISABLED;
        } else {
            self.flags &= !FLAG_DISABLED;
        }
        self.outage = outage;
    }

    /// Marks an overlay as carrying the whole range table (even an empty one).
    pub fn carry_ranges(&mut self) {
        self.flags |= FLAG_RANGES;
    }

    /// The index of the meta (remediation and strings), added once.
    pub fn meta(
        &mut self,
        remediation: Remediation,
        type_name: &str,
        origin: &str,
        scenario: &str,
    ) -> u32 {
        let origin = truncate_utf8(origin, 255);
        let scenario = truncate_utf8(scenario, 495);
        let type_name = truncate_utf8(type_name, 255);
        let key = (
            remediation as u8,
            type_name.to_owned(),
            origin.to_owned(),
            scenario.to_owned(),
        );
        if let Some(&id) = self.meta_ids.get(&key) {
            return id;
        }
        let id = self.metas.len() as u32;
        assert!(id < MORE, "too many metas");
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(origin.as_bytes());
        self.strings.extend_from_slice(scenario.as_bytes());
        self.strings.extend_from_slice(type_name.as_bytes());
        let mut m = [0u8; 16];
        m[0] = remediation as u8;
        m[1] = origin.len() as u8;
        m[2] = type_name.len() as u8;
        m[4..6].copy_from_slice(&(scenario.len() as u16).to_le_bytes());
        m[8..12].copy_from_slice(&off.to_le_bytes());
        self.metas.push(m);
        self.meta_rank.push(rank(remediation as u8));
        self.meta_ids.insert(key, id);
        id
    }

    /// Appends a list sorted strongest first; returns its slot value (`1 + index`).
    fn push_list(&mut self, list: &[Verdict]) -> u32 {
        let mut sorted = list.to_vec();
        let ranks = &self.meta_rank;
        sorted.sort_by(|a, b| {
            (ranks[b.meta as usize], b.expires).cmp(&(ranks[a.meta as usize], a.expires))
        });
        let first = self.verdicts.len() as u32 + 1;
        assert!(first < TOMBSTONE - list.len() as u32, "too many verdicts");
        for (i, v) in sorted.iter().enumerate() {
            let more = if i + 1 < sorted.len() { MORE } else { 0 };
            self.verdicts.push([v.expires, v.meta | more]);
        }
        first
    }

    /// The decisions of one IPv4 address. An empty list is a tombstone (overlays).
    pub fn exact4(&mut self, key: u32, list: &[Verdict]) {
        let val = if list.is_empty() {
            TOMBSTONE
        } else {
            self.push_list(list)
        };
        self.v4.push((key, val));
    }

    /// The decisions of one IPv6 address. An empty list is a tombstone (overlays).
    pub fn exact6(&mut self, key: u128, list: &[Verdict]) {
        let val = if list.is_empty() {
            TOMBSTONE
        } else {
            self.push_list(list)
        };
        self.v6.push((key, val));
    }

    /// A range decision over `first..=last` (IPv4 addresses as numbers).
    pub fn range4(&mut self, first: u32, last: u32, v: Verdict) {
        self.r4.push((u128::from(first), u128::from(last), v));
    }

    /// A range decision over `first..=last` (IPv6).
    pub fn range6(&mut self, first: u128, last: u128, v: Verdict) {
        self.r6.push((first, last, v));
    }

    /// Cuts ranges into disjoint intervals, each with the list of every range covering it.
    fn intervals(&mut self, ranges: &[(u128, u128, Verdict)]) -> Vec<(u128, u128, u32)> {
        let mut events: Vec<(Pos, bool, usize)> = Vec::with_capacity(ranges.len() * 2);
        for (i, &(first, last, _)) in ranges.iter().enumerate() {
            assert!(first <= last, "range with first > last");
            events.push((Pos::At(first), true, i));
            let end = if last == u128::MAX {
                Pos::End
            } else {
                Pos::At(last + 1)
            };
            events.push((end, false, i));
        }
        events.sort_by_key(|e| e.0);
        let mut active = BTreeSet::new();
        let mut out = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, start, idx) = events[i];
                if start {
                    active.insert(idx);
                } else {
                    active.remove(&idx);
                }
                i += 1;
            }
            let (Pos::At(from), false) = (pos, active.is_empty()) else {
                continue;
            };
            let to = match events.get(i).map(|e| e.0) {
                Some(Pos::At(next)) => next - 1,
                _ => u128::MAX,
            };
            let list: Vec<Verdict> = active.iter().map(|&k| ranges[k].2).collect();
            let val = self.push_list(&list);
            out.push((from, to, val));
        }
        out
    }

    /// Lays the segment out; `seed` seeds both exact tables' hash.
    pub fn finish(mut self, seed: u64) -> Vec<u8> {
        if self.kind == KIND_BASE {
            self.flags &= !FLAG_RANGES;
        }
        let r4 = std::mem::take(&mut self.r4);
        let r6 = std::mem::take(&mut self.r6);
        let i4 = self.intervals(&r4);
        let i6 = self.intervals(&r6);
        let slots4 = slots_for(self.v4.len());
        let slots6 = slots_for(self.v6.len());
        let counts = [
            slots4,
            slots6,
            i4.len(),
            i6.len(),
            self.verdicts.len(),
            self.metas.len(),
            self.strings.len(),
        ];
        let mut offsets = [0usize; SECTIONS];
        let mut end = HEADER_LEN;
        for s in 0..SECTIONS {
            offsets[s] = end;
            end = align64(end + counts[s] * RECORD[s]);
        }
        let mut buf = vec![0u8; end];
        buf[0..8].copy_from_slice(MAGIC);
        put32(&mut buf, 8, VERSION);
        put32(&mut buf, 12, self.kind);
        put64(&mut buf, 16, self.generation);
        put64(&mut buf, 24, self.base_generation);
        put64(&mut buf, 32, seed);
        put32(&mut buf, 40, self.flags);
        put32(&mut buf, 44, self.outage as u32);
        put64(&mut buf, 48, end as u64);
        put64(&mut buf, 56, (self.v4.len() + self.v6.len()) as u64);
        for s in 0..SECTIONS {
            put64(&mut buf, 64 + s * 16, offsets[s] as u64);
            put64(&mut buf, 72 + s * 16, counts[s] as u64);
        }
        let mask4 = slots4.wrapping_sub(1);
        for &(key, val) in &self.v4 {
            let mut i = hash4(key, seed) as usize & mask4;
            loop {
                let at = offsets[SEC_V4] + i * 8;
                if get32(&buf, at + 4) == EMPTY {
                    put32(&mut buf, at, key);
                    put32(&mut buf, at + 4, val);
                    break;
                }
                assert_ne!(get32(&buf, at), key, "key {key} given twice");
                i = (i + 1) & mask4;
            }
        }
        let mask6 = slots6.wrapping_sub(1);
        for &(key, val) in &self.v6 {
            let mut i = hash6(key, seed) as usize & mask6;
            loop {
                let at = offsets[SEC_V6] + i * 24;
                if get32(&buf, at + 16) == EMPTY {
                    put64(&mut buf, at, (key >> 64) as u64);
                    put64(&mut buf, at + 8, key as u64);
                    put32(&mut buf, at + 16, val);
                    break;
                }
                i = (i + 1) & mask6;
            }
        }
        for (n, &(first, last, val)) in i4.iter().enumerate() {
            let at = offsets[SEC_R4] + n * 16;
            put32(&mut buf, at, first as u32);
            put32(&mut buf, at + 4, last as u32);
            put32(&mut buf, at + 8, val);
        }
        for (n, &(first, last, val)) in i6.iter().enumerate() {
            let at = offsets[SEC_R6] + n * 40;
            put64(&mut buf, at, (first >> 64) as u64);
            put64(&mut buf, at + 8, first as u64);
            put64(&mut buf, at + 16, (last >> 64) as u64);
            put64(&mut buf, at + 24, last as u64);
            put32(&mut buf, at + 32, val);
        }
        for (n, v) in self.verdicts.iter().enumerate() {
            let at = offsets[SEC_VERDICTS] + n * 8;
            put32(&mut buf, at, v[0]);
            put32(&mut buf, at + 4, v[1]);
        }
        for (n, m) in self.metas.iter().enumerate() {
            let at = offsets[SEC_METAS] + n * 16;
            buf[at..at + 16].copy_from_slice(m);
        }
        let at = offsets[SEC_STRINGS];
        buf[at..at + self.strings.len()].copy_from_slice(&self.strings);
        buf
    }
}

/// Table size for `n` keys: a power of two at least twice `n` (0 for none).
fn slots_for(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (2 * n).next_power_of_two().max(8)
    }
}

fn align64(n: usize) -> usize {
    (n + 63) & !63
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}
