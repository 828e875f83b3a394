//! The overview's small history: a ring of per-minute samples of counters that already
//! exist (lookups answered, requests refused), taken once a minute by [`sample`], off the
//! hot path (it only reads two atomics and a short list). 24 hours are kept.

use crate::store::Decider;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Minutes kept.
pub const MINUTES: usize = 24 * 60;

/// The counters at one minute (totals since start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Unix minute.
    pub minute: u64,
    pub checked: u64,
    pub refused: u64,
}

#[derive(Default)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
}

/// Requests checked and refused over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub checked: u64,
    pub refused: u64,
}

impl History {
    /// Adds the totals at `minute` (a second sample in the same minute replaces the first).
    pub fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.back().is_some_and(|b| b.minute == s.minute) {
            ring.pop_back();
        }
        ring.push_back(s);
        while ring.len() > MINUTES + 1 {
            ring.pop_front();
        }
    }

    /// What happened between `minutes` ago and `now` (the current totals).
    pub fn window(&self, now: Sample, minutes: u64) -> Window {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let from = now.minute.saturating_sub(minutes);
        let base = ring
            .iter()
            .find(|s| s.minute >= from)
            .copied()
            .unwrap_or(now);
        Window {
            checked: now.checked.saturating_sub(base.checked),
            refused: now.refused.saturating_sub(base.refused),
        }
    }

    /// Refusals in each of the last `buckets` spans of `span` minutes, oldest first.
    pub fn refusals(&self, now: Sample, buckets: usize, span: u64) -> Vec<u64> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut points: Vec<Sample> = ring.iter().copied().collect();
        points.push(now);
        let start = now.minute.saturating_sub(buckets as u64 * span);
        let mut out = vec![0u64; buckets];
        for pair in points.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.minute <= start {
                continue;
            }
            let i = ((b.minute - start).saturating_sub(1) / span) as usize;
            if let Some(slot) = out.get_mut(i.min(buckets - 1)) {
                *slot += b.refused.saturating_sub(a.refused);
            }
        }
        out
    }
}

/// The totals of `decider` now.
pub fn now(decider: &Decider) -> Sample {
    let totals = decider.usage().totals();
    Sample {
        minute: crate::clock::now_secs_precise() as u64 / 60,
        checked: decider.lookups(),
        refused: totals.dropped.values().sum(),
    }
}

/// Samples once a minute until shutdown.
pub async fn sample(
    history: Arc<History>,
    decider: Arc<Decider>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => history.push(now(&decider)),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(minute: u64, checked: u64, refused: u64) -> Sample {
        Sample {
            minute,
            checked,
            refused,
        }
    }

    #[test]
    fn windows_count_from_the_sample_at_their_start() {
        let h = History::default();
        for m in 0..200 {
            h.push(s(1000 + m, m * 10, m));
        }
        let now = s(1200, 2000, 200);
        assert_eq!(
            h.window(now, 60),
            Window {
                checked: 600,
                refused: 60
            }
        );
        // Younger than the window: everything since the first sample.
        assert_eq!(
            h.window(now, 24 * 60),
            Window {
                checked: 2000,
                refused: 200
            }
        );
    }

    #[test]
    fn refusals_fall_into_their_bucket() {
        let h = History::default();
        h.push(s(100, 0, 0));
        h.push(s(101, 5, 3));
        h.push(s(130, 9, 10));
        let now = s(160, 10, 10);
        // 4 buckets of 15 minutes over minutes 100..160.
        assert_eq!(h.refusals(now, 4, 15), vec![3, 7, 0, 0]);
    }

    #[test]
    fn the_ring_keeps_one_day() {
        let h = History::default();
        for m in 0..(MINUTES as u64 + 50) {
            h.push(s(m, m, 0));
        }
        h.push(s(MINUTES as u64 + 49, 1, 0));
        assert_eq!(h.ring.lock().unwrap().len(), MINUTES + 1);
    }
}
