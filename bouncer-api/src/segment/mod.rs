//! Snapshot segments (`SNAPSHOT.md`): the layout, the reference reader and the writer.
//!
//! A segment is an immutable file of decisions that a reader maps and looks up in
//! without a syscall. [`Builder`] writes one; [`Segment`] checks and reads one;
//! [`lookup`] answers for an address from a base and an optional overlay.

mod build;
mod read;

pub use build::{Builder, Verdict};
pub use read::{lookup, Answer, Segment, SegmentError};

/// First 8 bytes of every segment.
pub const MAGIC: &[u8; 8] = b"CERBSNAP";
/// First 8 bytes of the `current` file.
pub const CURRENT_MAGIC: &[u8; 8] = b"CERBCURR";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 256;
/// Size of the `current` file.
pub const CURRENT_LEN: usize = 4096;

pub const KIND_BASE: u32 = 0;
pub const KIND_OVERLAY: u32 = 1;

/// Header flag: protection is disabled (every lookup answers allow).
pub const FLAG_DISABLED: u32 = 1;
/// Header flag: this overlay carries the whole range table.
pub const FLAG_RANGES: u32 = 2;

/// Slot value of an empty slot and of a tombstone.
pub const EMPTY: u32 = 0;
pub const TOMBSTONE: u32 = u32::MAX;
/// Verdict meta bit: the next verdict belongs to the same list.
pub const MORE: u32 = 1 << 31;

pub(crate) const SECTIONS: usize = 7;
pub(crate) const SEC_V4: usize = 0;
pub(crate) const SEC_V6: usize = 1;
pub(crate) const SEC_R4: usize = 2;
pub(crate) const SEC_R6: usize = 3;
pub(crate) const SEC_VERDICTS: usize = 4;
pub(crate) const SEC_METAS: usize = 5;
pub(crate) const SEC_STRINGS: usize = 6;
pub(crate) const RECORD: [usize; SECTIONS] = [8, 24, 16, 40, 8, 16, 1];

/// Outage state in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outage {
    #[default]
    None = 0,
    FailOpen = 1,
    FailClosed = 2,
}

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[inline]
pub fn hash4(key: u32, seed: u64) -> u64 {
    fmix64(u64::from(key) ^ seed)
}

#[inline]
pub fn hash6(key: u128, seed: u64) -> u64 {
    let hi = (key >> 64) as u64;
    let lo = key as u64;
    fmix64(hi ^ fmix64(lo ^ seed))
}

/// Strength of a remediation code (protocol codes): ban > captcha > throttle > other.
#[inline]
pub fn rank(code: u8) -> u8 {
    match code {
        1 => 4,
        2 => 3,
        3 => 2,
        4 => 1,
        _ => 0,
    }
}

/// File name of the base segment of `generation`.
pub fn base_name(generation: u64) -> String {
    format!("base-{generation:020}.seg")
}

/// File name of the overlay segment of `generation`.
pub fn overlay_name(generation: u64) -> String {
    format!("overlay-{generation:020}.seg")
}

#[cfg(test)]
mod tests;
