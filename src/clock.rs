//! The wall clock that rate limit windows and buckets are measured on.
//!
//! Windows are aligned to the Unix epoch so that every node and Redis agree which window a
//! request is in; a request must therefore be judged by the time it actually arrived. This
//! reads the system clock every time (`clock_gettime` through the vDSO, about 20 ns here).
//! A cached clock refreshed by a ticker thread was tried and dropped: on a loaded machine
//! the ticker's 1 ms sleep overslept by several milliseconds, so a request just after a
//! window boundary was counted in the window before it, and the thread woke 1,000 times a
//! second even on an idle proxy. `CLOCK_REALTIME_COARSE` is no better: it moves in 4 ms
//! steps here, too coarse for 10 ms windows.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_lags_the_system_clock() {
        for _ in 0..1_000 {
            let before = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            assert!(now_ns() >= before);
        }
    }
}
