//! Wall-clock helpers. The hot path reads a coarse clock (one atomic load) that a
//! background thread refreshes every 50 ms, instead of a clock call per lookup.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds, precise.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
