//! A read-only view of a published snapshot's parts for the segment writer
//! ([`crate::serve::segments`]): the base tables and their identity, the overlay, the
//! ranges and the metas, so a publish can be written as a small overlay segment.

use super::{Meta, Snapshot, Verdict};
use crate::decision::Target;
use std::sync::Arc;

/// A single-IP key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpKey {
    V4(u32),
    V6(u128),
}

impl Snapshot {
    /// Identity of the base tables: it changes exactly when a new base is installed.
    pub fn base_identity(&self) -> (usize, usize) {
        (
            Arc::as_ptr(self.v4.base()) as *const () as usize,
            Arc::as_ptr(self.v6.base()) as *const () as usize,
        )
    }

    /// Identity of the range table: it changes exactly when ranges change.
    pub fn ranges_identity(&self) -> usize {
        Arc::as_ptr(&self.range_list) as *const () as usize
    }

    /// Keys in the overlays (changes over the base).
    pub fn overlay_len(&self) -> usize {
        self.v4.overlay().len() + self.v6.overlay().len()
    }

    /// Keys in the bases.
    pub fn base_len(&self) -> usize {
        self.v4.base().len() + self.v6.base().len()
    }

    /// Every meta, indexed by [`Verdict::meta_index`] order.
    pub fn metas(&self) -> &[Meta] {
        &self.metas
    }

    /// The meta index of a verdict.
    pub fn meta_of(&self, v: &Verdict) -> usize {
        v.meta_index()
    }

    /// Every key of the base tables with its decisions, the overlay ignored.
    pub fn for_each_base(&self, mut f: impl FnMut(IpKey, &[Verdict])) {
        for (k, v) in self.v4.base().iter() {
            match (v.has_more(), self.multi4.get(k)) {
                (true, Some(list)) => f(IpKey::V4(*k), list),
                _ => f(IpKey::V4(*k), std::slice::from_ref(v)),
            }
        }
        for (k, v) in self.v6.base().iter() {
            match (v.has_more(), self.multi6.get(k)) {
                (true, Some(list)) => f(IpKey::V6(*k), list),
                _ => f(IpKey::V6(*k), std::slice::from_ref(v)),
            }
        }
    }

    /// Every key of the overlays: its decisions now, or an empty list once removed.
    pub fn for_each_overlay(&self, mut f: impl FnMut(IpKey, &[Verdict])) {
        for (k, slot) in self.v4.overlay().iter() {
            match slot {
                None => f(IpKey::V4(*k), &[]),
                Some(v) => match (v.has_more(), self.multi4.get(k)) {
                    (true, Some(list)) => f(IpKey::V4(*k), list),
                    _ => f(IpKey::V4(*k), std::slice::from_ref(v)),
                },
            }
        }
        for (k, slot) in self.v6.overlay().iter() {
            match slot {
                None => f(IpKey::V6(*k), &[]),
                Some(v) => match (v.has_more(), self.multi6.get(k)) {
                    (true, Some(list)) => f(IpKey::V6(*k), list),
                    _ => f(IpKey::V6(*k), std::slice::from_ref(v)),
                },
            }
        }
    }

    /// Every range decision.
    pub fn ranges(&self) -> &[(Target, Verdict)] {
        &self.range_list
    }
}
