//! Per-key, per-window admission counts from a load's outcomes, with requests whose round
//! trip straddled a window boundary counted apart (the proxy decided them in one window or
//! the other; the client cannot tell which).

use super::load::Outcome;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
pub struct WindowCount {
    pub offered: u64,
    pub admitted: u64,
    pub straddling: u64,
}

/// How far the proxy's clock and the client's may disagree about when a request was.
const CLOCK_SLACK: Duration = Duration::from_millis(2);

/// Counts by (key, window). `base` is the wall clock when the load started (its
/// `started_unix`, read together with the instant its outcomes count from); `key_of` names
/// the key of a URL index.
pub fn count(
    outcomes: &[Outcome],
    base: Duration,
    window_ms: u64,
    key_of: impl Fn(usize) -> String,
) -> BTreeMap<(String, u64), WindowCount> {
    let mut out: BTreeMap<(String, u64), WindowCount> = BTreeMap::new();
    for o in outcomes {
        // The proxy windows by its own clock (a TSC read anchored to the system clock),
        // the client by the wall clock at millisecond resolution: a request this close
        // to a boundary may be decided on its other side, so it counts as straddling.
        // Under load a fixed window's whole quota goes in its first millisecond, so a
        // client clock off by even that much would move it into the window before.
        let sent = (base + o.sent).saturating_sub(CLOCK_SLACK);
        let done = base + o.sent + o.latency + CLOCK_SLACK;
        let (a, b) = (
            sent.as_millis() as u64 / window_ms,
            done.as_millis() as u64 / window_ms,
        );
        let key = key_of(o.url);
        let c = out.entry((key, a)).or_default();
        if a == b {
            c.offered += 1;
            if o.status == 200 {
                c.admitted += 1;
            }
        } else if o.status == 200 {
            c.straddling += 1;
            out.entry((key_of(o.url), b)).or_default().straddling += 1;
        }
    }
    out
}

/// Only windows the load covered whole: drops the first and last window seen per key.
pub fn whole_windows(
    counts: BTreeMap<(String, u64), WindowCount>,
) -> BTreeMap<(String, u64), WindowCount> {
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (k, w) in counts.keys() {
        let f = first.entry(k.clone()).or_insert(*w);
        *f = (*f).min(*w);
        let l = last.entry(k.clone()).or_insert(*w);
        *l = (*l).max(*w);
    }
    counts
        .into_iter()
        .filter(|((k, w), _)| first.get(k) != Some(w) && last.get(k) != Some(w))
        .collect()
}
