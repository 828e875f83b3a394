//! Wall-clock helpers. The hot path reads a coarse clock (one atomic load) that a
//! background thread refreshes every 50 ms, instead of a clock call per lookup.
//!
//! [`ClockWatch`] tells a wall-clock jump (NTP stepping, a VM resumed, an operator's
//! `date -s`) from time passing, by comparing the wall clock with the monotonic one.
//! Tests move the wall clock with [`shift_wall_clock`].

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Added to the system's wall clock (ms); 0 unless a test moved it.
static SHIFT_MS: AtomicI64 = AtomicI64::new(0);

/// Moves this process's wall clock by `ms` (negative: backwards), as a clock step would.
/// For tests of clock jumps; nothing else calls it.
#[doc(hidden)]
pub fn shift_wall_clock(ms: i64) {
    SHIFT_MS.fetch_add(ms, Ordering::Relaxed);
}

/// Unix time in milliseconds, precise.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + SHIFT_MS.load(Ordering::Relaxed)
}

/// Unix time in whole seconds, precise.
pub fn now_secs_precise() -> u32 {
    (now_ms() / 1000).clamp(0, u32::MAX as i64) as u32
}

static COARSE: AtomicU32 = AtomicU32::new(0);
static TICKER: OnceLock<()> = OnceLock::new();

/// Unix time in whole seconds, at most about 50 ms old. The first call starts the ticker.
#[inline]
pub fn now_secs() -> u32 {
    let now = COARSE.load(Ordering::Relaxed);
    if now != 0 {
        return now;
    }
    start_ticker();
    now_secs_precise()
}

fn start_ticker() {
    TICKER.get_or_init(|| {
        COARSE.store(now_secs_precise(), Ordering::Relaxed);
        std::thread::Builder::new()
            .name("cerberus-clock".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(50));
                COARSE.store(now_secs_precise(), Ordering::Relaxed);
            })
            .expect("spawn clock thread");
    });
}

/// A wall-clock step larger than this, between two readings, is a jump.
pub const JUMP_TOLERANCE: Duration = Duration::from_secs(5);

/// Watches the wall clock against the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct ClockWatch {
    mono: Instant,
    wall_ms: i64,
}

impl Default for ClockWatch {
    fn default() -> Self {
        ClockWatch::new()
    }
}

impl ClockWatch {
    pub fn new() -> ClockWatch {
        ClockWatch::at(Instant::now(), now_ms())
    }

    /// A watch whose first reading is given (tests).
    pub fn at(mono: Instant, wall_ms: i64) -> ClockWatch {
        ClockWatch { mono, wall_ms }
    }

    /// Takes a reading now; see [`ClockWatch::check_at`].
    pub fn check(&mut self) -> Option<i64> {
        self.check_at(Instant::now(), now_ms())
    }

    /// Compares this reading with the last: `Some(ms)` when the wall clock moved by more
    /// than [`JUMP_TOLERANCE`] beyond the monotonic time that passed (positive: forward).
    /// The reading becomes the new reference either way.
    pub fn check_at(&mut self, mono: Instant, wall_ms: i64) -> Option<i64> {
        let passed = mono.saturating_duration_since(self.mono).as_millis() as i64;
        let jump = wall_ms - self.wall_ms - passed;
        self.mono = mono;
        self.wall_ms = wall_ms;
        (jump.unsigned_abs() > JUMP_TOLERANCE.as_millis() as u64).then_some(jump)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_told_from_time_passing() {
        let t0 = Instant::now();
        let mut w = ClockWatch::at(t0, 1_000_000);
        // An hour passes on both clocks, with a little drift: no jump.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(w.check_at(t1, 1_000_000 + 3_600_000 + 800), None);
        // The wall clock steps a day forward within a second.
        let t2 = t1 + Duration::from_secs(1);
        let forward = w.check_at(t2, 1_000_000 + 3_601_800 + 86_400_000).unwrap();
        assert!((86_399_000..=86_401_000).contains(&forward), "{forward}");
        // The new reading is the reference: the next second is normal again.
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(w.check_at(t3, 1_000_000 + 3_602_800 + 86_400_000), None);
        // A step back of a minute.
        let t4 = t3 + Duration::from_secs(1);
        let back = w
            .check_at(t4, 1_000_000 + 3_603_800 + 86_400_000 - 60_000)
            .unwrap();
        assert!((-61_000..=-59_000).contains(&back), "{back}");
    }
}
