//! Wall-clock helpers for window-aligned rate limit tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Waits until the clock is between `from` and `to` ms into a `window_ms` window (windows
/// are aligned to the Unix epoch, like tollgate's), so a burst lands where the test wants.
pub fn wait_until_in_window(window_ms: u64, from: u64, to: u64) {
    let deadline = now_ms() + 3 * window_ms + 1_000;
    loop {
        let into = now_ms() % window_ms;
        if (from..to).contains(&into) {
            return;
        }
        assert!(
            now_ms() < deadline,
            "the clock never reached {from}..{to} ms into a window"
        );
        let wait = if into < from {
            from - into
        } else {
            window_ms - into + from
        };
        std::thread::sleep(Duration::from_millis(wait.clamp(1, 20)));
    }
}

/// Waits for the start of the next window (at most 30 ms into it), never the current one.
pub fn wait_for_window_start(window_ms: u64) {
    let current = now_ms() / window_ms;
    let deadline = now_ms() + 2 * window_ms + 1_000;
    loop {
        let now = now_ms();
        if now / window_ms > current && now % window_ms < 30 {
            return;
        }
        assert!(now < deadline, "no window start seen");
        let wait = window_ms - now % window_ms;
        std::thread::sleep(Duration::from_millis(wait.clamp(1, 20)));
    }
}
