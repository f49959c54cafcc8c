//! A coarse wall clock for the request path: one atomic load instead of a `clock_gettime`
//! call, which was a fifth of a rate limit decision's time. A thread refreshes it every
//! millisecond; windows and buckets only need millisecond precision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static NOW_NS: AtomicU64 = AtomicU64::new(0);
static TICKER: Once = Once::new();

/// How often the clock is refreshed.
const RESOLUTION: Duration = Duration::from_millis(1);

fn precise_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn start() {
    TICKER.call_once(|| {
        NOW_NS.store(precise_ns(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("coarse-clock".into())
            .spawn(|| loop {
                std::thread::sleep(RESOLUTION);
                NOW_NS.store(precise_ns(), Ordering::Relaxed);
            });
        if spawned.is_err() {
            // Without the ticker every read takes the precise path below.
            NOW_NS.store(0, Ordering::Relaxed);
        }
    });
}

/// Unix time in nanoseconds, at most about a millisecond old.
pub fn now_ns() -> u64 {
    start();
    match NOW_NS.load(Ordering::Relaxed) {
        0 => precise_ns(),
        ns => ns,
    }
}

/// Unix time in milliseconds, at most about a millisecond old.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_precise_clock_within_a_few_milliseconds() {
        let coarse = now_ns();
        let precise = precise_ns();
        assert!(
            precise.abs_diff(coarse) < 50_000_000,
            "{coarse} vs {precise}"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(now_ns() > coarse, "the ticker moves the clock");
    }
}
