//! The reference reader: a checked view of one segment and the lookup over a base and
//! an overlay (`SNAPSHOT.md` section 6).

use super::*;
use crate::Remediation;
use std::net::IpAddr;

/// Why a segment was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment too short ({0} bytes)")]
    Short(usize),
    #[error("not a segment (bad magic)")]
    Magic,
    #[error("segment version {0}, this reader knows 1")]
    Version(u32),
    #[error("unknown segment kind {0}")]
    Kind(u32),
    #[error("unknown outage value {0}")]
    Outage(u32),
    #[error("file_len {header} but the file has {actual} bytes")]
    Length { header: u64, actual: usize },
    #[error("section {0} lies outside the file or is misshapen")]
    Section(usize),
    #[error("a slot or verdict points outside its section")]
    Dangling,
}

/// A checked segment. Every index read later is checked again (cheaply) so a damaged
/// file cannot make a lookup read out of bounds.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    buf: &'a [u8],
    sec: [(usize, usize); SECTIONS],
}

/// The answer of a lookup; strings borrow the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer<'a> {
    pub remediation: Remediation,
    pub bypassed: bool,
    pub fail_closed: bool,
    pub expires_in_s: u32,
    pub origin: &'a str,
    pub scenario: &'a str,
    pub type_name: &'a str,
}

enum Exact {
    Absent,
    Tombstone,
    List(u32),
}

impl<'a> Segment<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Segment<'a>, SegmentError> {
        if buf.len() < HEADER_LEN {
            return Err(SegmentError::Short(buf.len()));
        }
        if &buf[0..8] != MAGIC {
            return Err(SegmentError::Magic);
        }
        let s = Segment {
            buf,
            sec: [(0, 0); SECTIONS],
        };
        if s.u32_at(8) != VERSION {
            return Err(SegmentError::Version(s.u32_at(8)));
        }
        if s.kind() > KIND_OVERLAY {
            return Err(SegmentError::Kind(s.kind()));
        }
        if s.u32_at(44) > 2 {
            return Err(SegmentError::Outage(s.u32_at(44)));
        }
        if s.u64_at(48) != buf.len() as u64 {
            return Err(SegmentError::Length {
                header: s.u64_at(48),
                actual: buf.len(),
            });
        }
        let mut sec = [(0, 0); SECTIONS];
        for (i, slot) in sec.iter_mut().enumerate() {
            let off = s.u64_at(64 + i * 16);
            let count = s.u64_at(72 + i * 16);
            let bytes = count
                .checked_mul(RECORD[i] as u64)
                .ok_or(SegmentError::Section(i))?;
            let end = off.checked_add(bytes).ok_or(SegmentError::Section(i))?;
            let table = i == SEC_V4 || i == SEC_V6;
            if off < HEADER_LEN as u64
                || end > buf.len() as u64
                || (table && count & count.wrapping_sub(1) != 0)
            {
                return Err(SegmentError::Section(i));
            }
            *slot = (off as usize, count as usize);
        }
        Ok(Segment { buf, sec })
    }

    #[inline]
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.buf[at..at + 4].try_into().unwrap())
    }

    #[inline]
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.buf[at..at + 8].try_into().unwrap())
    }

    #[inline]
    fn u128_at(&self, at: usize) -> u128 {
        (u128::from(self.u64_at(at)) << 64) | u128::from(self.u64_at(at + 8))
    }

    pub fn kind(&self) -> u32 {
        self.u32_at(12)
    }
    pub fn generation(&self) -> u64 {
        self.u64_at(16)
    }
    pub fn base_generation(&self) -> u64 {
        self.u64_at(24)
    }
    pub fn flags(&self) -> u32 {
        self.u32_at(40)
    }
    pub fn outage(&self) -> Outage {
        match self.u32_at(44) {
            1 => Outage::FailOpen,
            2 => Outage::FailClosed,
            _ => Outage::None,
        }
    }
    /// Number of single-IP keys (tombstones included in an overlay).
    pub fn keys(&self) -> u64 {
        self.u64_at(56)
    }

    fn exact4(&self, key: u32) -> Exact {
        let seed = self.u64_at(32);
        self.probe(SEC_V4, hash4(key, seed), 4, |at| self.u32_at(at) == key)
    }

    fn exact6(&self, key: u128) -> Exact {
        let seed = self.u64_at(32);
        self.probe(SEC_V6, hash6(key, seed), 16, |at| self.u128_at(at) == key)
    }

    /// Linear probing from `hash` in table `sec` (SNAPSHOT.md section 3): `val` sits at
    /// `val_at` in each slot, `is_key(slot offset)` compares the key.
    fn probe(&self, sec: usize, hash: u64, val_at: usize, is_key: impl Fn(usize) -> bool) -> Exact {
        let (off, slots) = self.sec[sec];
        if slots == 0 {
            return Exact::Absent;
        }
        let mask = slots - 1;
        let mut i = hash as usize & mask;
        for _ in 0..slots {
            let at = off + i * RECORD[sec];
            let val = self.u32_at(at + val_at);
            if val == EMPTY {
                return Exact::Absent;
            }
            if is_key(at) {
                return if val == TOMBSTONE {
                    Exact::Tombstone
                } else {
                    Exact::List(val)
                };
            }
            i = (i + 1) & mask;
        }
        Exact::Absent
    }

    fn range4(&self, key: u32) -> Option<u32> {
        let (off, n) = self.sec[SEC_R4];
        // the number of intervals whose first <= key
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.u32_at(off + mid * 16) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let at = off + lo.checked_sub(1)? * 16;
        (key <= self.u32_at(at + 4)).then(|| self.u32_at(at + 8))
    }

    fn range6(&self, key: u128) -> Option<u32> {
        let (off, n) = self.sec[SEC_R6];
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.u128_at(off + mid * 40) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let at = off + lo.checked_sub(1)? * 40;
        (key <= self.u128_at(at + 16)).then(|| self.u32_at(at + 32))
    }

    /// The first verdict of the list at slot value `val` with `expires > now`:
    /// (expires, meta index).
    fn first_live(&self, val: u32, now: u32) -> Option<(u32, u32)> {
        let (off, n) = self.sec[SEC_VERDICTS];
        let mut i = val.checked_sub(1)? as usize;
        while i < n {
            let at = off + i * 8;
            let (expires, meta) = (self.u32_at(at), self.u32_at(at + 4));
            if expires > now {
                return Some((expires, meta & !MORE));
            }
            if meta & MORE == 0 {
                return None;
            }
            i += 1;
        }
        None
    }

    /// (remediation code, origin, scenario, type) of meta `i`.
    fn meta(&self, i: u32) -> Option<(u8, &'a str, &'a str, &'a str)> {
        let (off, n) = self.sec[SEC_METAS];
        if i as usize >= n {
            return None;
        }
        let at = off + i as usize * 16;
        let m = &self.buf[at..at + 16];
        let (olen, tlen) = (usize::from(m[1]), usize::from(m[2]));
        let slen = usize::from(u16::from_le_bytes([m[4], m[5]]));
        let (soff, sn) = self.sec[SEC_STRINGS];
        let start = soff + u32::from_le_bytes(m[8..12].try_into().unwrap()) as usize;
        let end = start + olen + slen + tlen;
        if end > soff + sn {
            return None;
        }
        let text = |a: usize, b: usize| std::str::from_utf8(&self.buf[a..b]).ok();
        Some((
            m[0],
            text(start, start + olen)?,
            text(start + olen, start + olen + slen)?,
            text(start + olen + slen, end)?,
        ))
    }

    fn rank_of(&self, v: (u32, u32)) -> (u8, u32) {
        (self.meta(v.1).map_or(0, |m| rank(m.0)), v.0)
    }
}

/// The answer for `ip` at unix second `now` from `base` and `overlay`.
pub fn lookup<'a>(
    base: &Segment<'a>,
    overlay: Option<&Segment<'a>>,
    ip: IpAddr,
    now: u32,
) -> Answer<'a> {
    let top = overlay.unwrap_or(base);
    if top.flags() & FLAG_DISABLED != 0 {
        return Answer {
            bypassed: true,
            ..Answer::default()
        };
    }
    match top.outage() {
        Outage::FailClosed => {
            return Answer {
                remediation: Remediation::Ban,
                fail_closed: true,
                ..Answer::default()
            }
        }
        Outage::FailOpen => return Answer::default(),
        Outage::None => {}
    }
    let ranges = match overlay {
        Some(o) if o.flags() & FLAG_RANGES != 0 => o,
        _ => base,
    };
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (exact, range) = match ip {
        IpAddr::V4(a) => {
            let key = u32::from(a);
            (
                pick(base, overlay, |s| s.exact4(key)),
                (ranges, ranges.range4(key)),
            )
        }
        IpAddr::V6(a) => {
            let key = u128::from(a);
            (
                pick(base, overlay, |s| s.exact6(key)),
                (ranges, ranges.range6(key)),
            )
        }
    };
    let exact = exact.and_then(|(s, val)| Some((s, s.first_live(val, now)?)));
    let range = range
        .1
        .and_then(|val| Some((range.0, range.0.first_live(val, now)?)));
    let best = match (exact, range) {
        (Some(e), Some(r)) => Some(if r.0.rank_of(r.1) > e.0.rank_of(e.1) {
            r
        } else {
            e
        }),
        (e, r) => e.or(r),
    };
    let Some((seg, (expires, meta))) = best else {
        return Answer::default();
    };
    let Some((code, origin, scenario, type_name)) = seg.meta(meta) else {
        return Answer::default();
    };
    Answer {
        remediation: Remediation::from_u8(code).unwrap_or(Remediation::Other),
        bypassed: false,
        fail_closed: false,
        expires_in_s: expires - now,
        origin,
        scenario,
        type_name,
    }
}

/// The exact list for a key: the overlay's entry when it has one, else the base's.
fn pick<'s, 'a>(
    base: &'s Segment<'a>,
    overlay: Option<&'s Segment<'a>>,
    probe: impl Fn(&Segment<'a>) -> Exact,
) -> Option<(&'s Segment<'a>, u32)> {
    if let Some(o) = overlay {
        match probe(o) {
            Exact::List(v) => return Some((o, v)),
            Exact::Tombstone => return None,
            Exact::Absent => {}
        }
    }
    match probe(base) {
        Exact::List(v) => Some((base, v)),
        _ => None,
    }
}
