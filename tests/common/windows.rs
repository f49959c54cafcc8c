//! Per-key, per-window admission counts from a load's outcomes, with requests whose round
//! trip straddled a window boundary counted apart (the proxy decided them in one window or
//! the other; the client cannot tell which).

use super::load::Outcome;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, Copy)]
pub struct WindowCount {
    pub offered: u64,
    pub admitted: u64,
    pub straddling: u64,
}

/// How far the proxy's clock and the client's may disagree about when a request was.
const CLOCK_SLACK_MS: u64 = 2;

/// Counts by (key, window). `base_ms` is the wall clock when the load started; `key_of`
/// names the key of a URL index.
pub fn count(
    outcomes: &[Outcome],
    base_ms: u64,
    window_ms: u64,
    key_of: impl Fn(usize) -> String,
) -> BTreeMap<(String, u64), WindowCount> {
    let mut out: BTreeMap<(String, u64), WindowCount> = BTreeMap::new();
    for o in outcomes {
        // The proxy windows by its own clock (a TSC read anchored to the system clock),
        // the client by the wall clock at millisecond resolution: a request this close
        // to a boundary may be decided on its other side, so it counts as straddling.
        let sent = (base_ms + o.sent.as_millis() as u64).saturating_sub(CLOCK_SLACK_MS);
        let done =
            base_ms + o.sent.as_millis() as u64 + o.latency.as_millis() as u64 + 1 + CLOCK_SLACK_MS;
        let (a, b) = (sent / window_ms, done / window_ms);
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
