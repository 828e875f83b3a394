//! Readiness of the doors (a leaf: no I/O, no imports from the rest of the crate): whether
//! the daemon has a decision set yet. The sync loop publishes [`FirstSync`] once its first
//! pull is applied; the doors read it through [`Readiness`] and never see the sync loop.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once, by the sync loop, when its first pull has been applied and published; never
/// cleared. Clones share the flag. Derefs to the `AtomicBool` (the sync loop's
/// `swap(true, ..)` tells it whether this pull was the first).
#[derive(Clone, Default, Debug)]
pub struct FirstSync(Arc<AtomicBool>);

impl FirstSync {
    /// Whether the first pull has been published.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Deref for FirstSync {
    type Target = AtomicBool;

    fn deref(&self) -> &AtomicBool {
        &self.0
    }
}

/// Whether the doors have a decision set to answer from: standalone mode, a persisted
/// snapshot, or a first successful pull. Lookups before that answer with status
/// `not_ready`.
#[derive(Clone)]
pub struct Readiness {
    at_start: bool,
    first_sync: FirstSync,
}

impl Readiness {
    /// Ready from the start when `at_start`, else once `first_sync` is set.
    pub fn new(at_start: bool, first_sync: FirstSync) -> Readiness {
        Readiness {
            at_start,
            first_sync,
        }
    }

    /// Always ready (tests, standalone tools).
    pub fn ready() -> Readiness {
        Readiness::new(true, FirstSync::default())
    }

    #[inline]
    pub fn get(&self) -> bool {
        self.at_start || self.first_sync.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_the_first_sync_is_published() {
        let flag = FirstSync::default();
        let ready = Readiness::new(false, flag.clone());
        assert!(!ready.get());
        assert!(!flag.swap(true, Ordering::Relaxed));
        assert!(ready.get());
        assert!(Readiness::new(true, FirstSync::default()).get());
        assert!(Readiness::ready().get());
    }
}
