//! The wall clock that rate limit windows and buckets are measured on.
//!
//! Windows are aligned to the Unix epoch so that every node and Redis agree which window a
//! request is in; a request must therefore be judged by the time it actually arrived, to
//! well under a millisecond. Reading the system clock costs 30 ns here (the vDSO's
//! `clock_gettime` plus `SystemTime`'s conversions), a quarter of a whole decision.
//!
//! So each thread anchors the system clock to the CPU's time stamp counter (through
//! `quanta`, which checks that the counter is invariant and calibrates it, and falls back to
//! the monotonic clock where it is not) and extrapolates from that anchor, reading the
//! system clock again every [`REANCHOR_NS`]. Between anchors the reading can drift from the
//! system clock only by the counter's calibration error and any NTP slew over those 10 ms:
//! microseconds at the very worst.
//!
//! Two cheaper clocks were tried and dropped: a cached clock refreshed by a ticker thread
//! (on a loaded machine the ticker's 1 ms sleep overslept by several milliseconds, so a
//! request just after a window boundary was counted in the window before, and the thread
//! woke 1,000 times a second on an idle proxy), and `CLOCK_REALTIME_COARSE`, which moves in
//! 4 ms steps here, too coarse for 10 ms windows.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a thread extrapolates from its anchor before it reads the system clock again.
pub const REANCHOR_NS: u64 = 10_000_000;

#[derive(Clone, Copy)]
struct Anchor {
    /// The counter's raw reading at the anchor; 0 before the thread's first reading.
    raw: u64,
    /// The system clock at the anchor, Unix ns.
    unix_ns: u64,
}

thread_local! {
    static ANCHOR: Cell<Anchor> = const { Cell::new(Anchor { raw: 0, unix_ns: 0 }) };
}

fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

/// Calibrates the counter (up to 200 ms, once per process), so that the first request
/// doesn't pay for it.
pub fn init() {
    counter();
}

/// The system clock, Unix ns.
fn system_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unix time in nanoseconds.
#[inline]
pub fn now_ns() -> u64 {
    let counter = counter();
    let raw = counter.raw();
    ANCHOR.with(|anchor| {
        let a = anchor.get();
        let elapsed = counter.delta_as_nanos(a.raw, raw);
        // A counter that reads behind the anchor (a thread moved to a core whose counter
        // lags, or a VM restored from a snapshot) gets a fresh anchor rather than a clock
        // that stands still until the counter catches up.
        if a.raw != 0 && raw >= a.raw && elapsed < REANCHOR_NS {
            return a.unix_ns + elapsed;
        }
        let unix_ns = system_ns();
        anchor.set(Anchor {
            raw: counter.raw().max(1),
            unix_ns,
        });
        unix_ns
    })
}

/// Unix time in milliseconds.
#[inline]
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Further than this from the system clock and a request within it of a window boundary
    /// could be counted in the wrong window; 100 µs is far beyond any calibration error.
    const TOLERANCE_NS: u64 = 100_000;

    #[test]
    fn stays_within_100_us_of_the_system_clock_across_reanchors() {
        let deadline = system_ns() + 3 * REANCHOR_NS;
        let mut worst = 0;
        let mut reads = 0u64;
        while system_ns() < deadline {
            let before = system_ns();
            let now = now_ns();
            let after = system_ns();
            // Outside [before, after] only by the extrapolation's error.
            let off = before.saturating_sub(now).max(now.saturating_sub(after));
            worst = worst.max(off);
            reads += 1;
        }
        assert!(reads > 1_000, "only {reads} reads");
        assert!(
            worst < TOLERANCE_NS,
            "the clock strayed {worst} ns from the system clock"
        );
    }

    #[test]
    fn every_thread_reads_the_same_time() {
        let main = now_ns();
        let other = std::thread::spawn(now_ns).join().expect("thread");
        let after = now_ns();
        assert!(other + TOLERANCE_NS >= main && other <= after + TOLERANCE_NS);
    }

    #[test]
    fn milliseconds_follow_nanoseconds() {
        let ms = now_ms();
        let ns = now_ns();
        assert!(ns / 1_000_000 >= ms && ns / 1_000_000 <= ms + 1);
    }
}
