//! Costs known only from the response (LLM token usage): admission holds a `reserve`, and
//! the end of the response settles the actual cost in its place.
//!
//! Settling moves the count by `actual − reserve`. Less than the reserve is handed back like
//! any refund. More is charged whatever the limit says: a window's count goes past the limit
//! and a bucket below empty, a debt that refuses later requests until it is paid (the
//! window ends, the bucket refills). Nothing already admitted is taken back.
//!
//! The overdraft bound: admission only ever spends quota that fitted under the limit when it
//! was granted (or, in async mode, a node's small unbacked allowance), so once the last quota
//! of a window has been granted, the window can grow past the limit only by the surcharges
//! reported after that: what the requests in flight at the crossing (and those admitted from
//! quota nodes already held) used beyond their reserves. See [`overdraft_bound`].

/// A policy's typical response cost, smoothed over the responses it settled. In async
/// mode a node admits a request from the quota it holds only when that covers this much
/// (see [`crate::limit::lease::Lease::admit_window_needing`]); with less, it asks Redis first, so
/// that a node whose lease is a few units cannot admit a whole response's worth of tokens
/// each on the strength of them after the fleet has run out.
#[derive(Debug, Default)]
pub struct ExpectedCost(std::sync::atomic::AtomicU64);

impl ExpectedCost {
    /// The smoothed cost; 0 before any response settled.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Folds one settled cost in, an eighth of the way at a time (the step rounded away
    /// from zero, so that a steady cost is reached exactly). Racing settlements may lose
    /// one another's update: a smoothed figure can afford that, and it keeps this off any
    /// lock.
    pub fn observe(&self, actual: u64) {
        let old = self.get();
        let new = if old == 0 {
            actual
        } else if actual >= old {
            old + (actual - old).div_ceil(8)
        } else {
            old - (old - actual).div_ceil(8)
        };
        self.0.store(new, std::sync::atomic::Ordering::Relaxed);
    }

    /// What a node's lease must hold to admit a request of `cost` on its own.
    #[inline]
    pub fn need(&self, cost: u64) -> u64 {
        cost.max(self.get())
    }
}

/// How settling moves the count of an admission that held `reserve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The response cost exactly what was held.
    Even,
    /// It cost less: hand this much back.
    Refund(u64),
    /// It cost more: charge this much on top, limit or not.
    Surcharge(u64),
}

/// What settling an admission that held `reserve` with an `actual` cost does.
pub fn settle(reserve: u64, actual: u64) -> Settlement {
    match actual.cmp(&reserve) {
        std::cmp::Ordering::Equal => Settlement::Even,
        std::cmp::Ordering::Less => Settlement::Refund(reserve - actual),
        std::cmp::Ordering::Greater => Settlement::Surcharge(actual - reserve),
    }
}

/// The most a limit's count can exceed the limit by: the unbacked allowance of async mode
/// (`slack`, 0 in atomic and local mode), plus what each admission settled after the
/// crossing used beyond its reserve. `settled_after` yields `(reserve, actual)`.
pub fn overdraft_bound(slack: u64, settled_after: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    settled_after
        .into_iter()
        .fold(slack, |sum, (reserve, actual)| {
            sum.saturating_add(actual.saturating_sub(reserve))
        })
}

/// Why a usage value could not be charged; the admission then costs its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// The response ended (or was cut) before the value arrived.
    Missing,
    NotANumber,
    Negative,
    /// Over the policy's `max_cost`.
    TooLarge,
}

impl Unusable {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unusable::Missing => "missing",
            Unusable::NotANumber => "not_a_number",
            Unusable::Negative => "negative",
            Unusable::TooLarge => "too_large",
        }
    }
}

/// The cost a JSON usage value stands for. A fraction rounds up: a cost is whole units, and
/// rounding down would let a client that is always billed 0.5 go free.
pub fn json_cost(value: Option<&serde_json::Value>, max_cost: u64) -> Result<u64, Unusable> {
    let number = match value {
        None | Some(serde_json::Value::Null) => return Err(Unusable::Missing),
        Some(serde_json::Value::Number(n)) => n,
        // Some APIs quote their numbers.
        Some(serde_json::Value::String(s)) => return text_cost(s.as_bytes(), max_cost),
        Some(_) => return Err(Unusable::NotANumber),
    };
    if let Some(n) = number.as_u64() {
        return bounded(n, max_cost);
    }
    if number.as_i64().is_some() {
        return Err(Unusable::Negative);
    }
    float_cost(number.as_f64().ok_or(Unusable::NotANumber)?, max_cost)
}

/// The cost a header's value (or a quoted JSON value) stands for.
pub fn text_cost(text: &[u8], max_cost: u64) -> Result<u64, Unusable> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Unusable::NotANumber)?
        .trim();
    if text.is_empty() {
        return Err(Unusable::Missing);
    }
    if let Ok(n) = text.parse::<u64>() {
        return bounded(n, max_cost);
    }
    if text.starts_with('-') && text[1..].bytes().all(|b| b.is_ascii_digit()) && text.len() > 1 {
        return Err(Unusable::Negative);
    }
    // Only plain decimal numbers: `inf`, `NaN` and `1e400` are no usage figures.
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Err(Unusable::NotANumber);
    }
    float_cost(
        text.parse::<f64>().map_err(|_| Unusable::NotANumber)?,
        max_cost,
    )
}

fn float_cost(f: f64, max_cost: u64) -> Result<u64, Unusable> {
    if !f.is_finite() {
        return Err(Unusable::NotANumber);
    }
    if f < 0.0 {
        return Err(Unusable::Negative);
    }
    let up = f.ceil();
    if up > max_cost as f64 {
        return Err(Unusable::TooLarge);
    }
    Ok(up as u64)
}

fn bounded(n: u64, max_cost: u64) -> Result<u64, Unusable> {
    if n > max_cost {
        Err(Unusable::TooLarge)
    } else {
        Ok(n)
    }
}

/// The value at a dotted `path` (`usage.total_tokens`) in a JSON document. A segment that is
/// a whole number also indexes an array (`choices.0.usage`).
pub fn at_path<'a>(doc: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(doc, |node, segment| match node {
        serde_json::Value::Object(map) => map.get(segment.as_str()),
        serde_json::Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settling_moves_the_count_by_the_difference() {
        assert_eq!(settle(1, 1), Settlement::Even);
        assert_eq!(settle(10, 3), Settlement::Refund(7));
        assert_eq!(settle(1, 100), Settlement::Surcharge(99));
        assert_eq!(settle(5, 0), Settlement::Refund(5));
    }

    #[test]
    fn the_bound_adds_what_each_request_used_beyond_its_reserve() {
        assert_eq!(overdraft_bound(0, []), 0);
        assert_eq!(overdraft_bound(2, [(1, 100), (10, 3), (1, 1)]), 2 + 99);
    }

    #[test]
    fn json_usage_values() {
        let max = 1_000;
        assert_eq!(json_cost(Some(&json!(100)), max), Ok(100));
        assert_eq!(json_cost(Some(&json!(0)), max), Ok(0));
        assert_eq!(
            json_cost(Some(&json!(2.1)), max),
            Ok(3),
            "fractions round up"
        );
        assert_eq!(json_cost(Some(&json!("42")), max), Ok(42));
        assert_eq!(json_cost(None, max), Err(Unusable::Missing));
        assert_eq!(json_cost(Some(&json!(null)), max), Err(Unusable::Missing));
        assert_eq!(json_cost(Some(&json!(-3)), max), Err(Unusable::Negative));
        assert_eq!(json_cost(Some(&json!(-0.5)), max), Err(Unusable::Negative));
        assert_eq!(json_cost(Some(&json!(1_001)), max), Err(Unusable::TooLarge));
        assert_eq!(json_cost(Some(&json!(1e300)), max), Err(Unusable::TooLarge));
        assert_eq!(
            json_cost(Some(&json!("lots")), max),
            Err(Unusable::NotANumber)
        );
        assert_eq!(
            json_cost(Some(&json!({"a": 1})), max),
            Err(Unusable::NotANumber)
        );
        assert_eq!(
            json_cost(Some(&json!(true)), max),
            Err(Unusable::NotANumber)
        );
        assert_eq!(json_cost(Some(&json!(u64::MAX)), u64::MAX), Ok(u64::MAX));
    }

    #[test]
    fn the_expected_cost_follows_settled_costs_and_never_asks_less_than_the_reserve() {
        let expected = ExpectedCost::default();
        assert_eq!(expected.need(1), 1, "nothing settled yet: the reserve");
        expected.observe(100);
        assert_eq!(expected.get(), 100, "the first cost as it is");
        for _ in 0..50 {
            expected.observe(100);
        }
        assert_eq!(expected.get(), 100, "a steady cost is reached exactly");
        expected.observe(900);
        assert_eq!(expected.get(), 200, "an eighth of the way to a new cost");
        assert_eq!(expected.need(500), 500, "never below the reserve");
        for _ in 0..100 {
            expected.observe(0);
        }
        assert_eq!(expected.get(), 0, "a cost that fell away is forgotten");
        assert_eq!(expected.need(1), 1);
    }

    #[test]
    fn header_usage_values() {
        let max = 1_000;
        assert_eq!(text_cost(b" 300 ", max), Ok(300));
        assert_eq!(text_cost(b"", max), Err(Unusable::Missing));
        assert_eq!(text_cost(b"-1", max), Err(Unusable::Negative));
        assert_eq!(text_cost(b"12.5", max), Ok(13));
        assert_eq!(text_cost(b"inf", max), Err(Unusable::NotANumber));
        assert_eq!(text_cost(b"NaN", max), Err(Unusable::NotANumber));
        assert_eq!(text_cost(b"1e400", max), Err(Unusable::NotANumber));
        assert_eq!(
            text_cost(b"99999999999999999999999", max),
            Err(Unusable::TooLarge)
        );
        assert_eq!(text_cost(b"12 tokens", max), Err(Unusable::NotANumber));
        assert_eq!(text_cost(&[0xff, 0x31], max), Err(Unusable::NotANumber));
    }

    #[test]
    fn dotted_paths_walk_objects_and_arrays() {
        let doc = json!({"usage": {"total_tokens": 7}, "choices": [{"n": 1}, {"n": 2}]});
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(at_path(&doc, &path("usage.total_tokens")), Some(&json!(7)));
        assert_eq!(at_path(&doc, &path("choices.1.n")), Some(&json!(2)));
        assert_eq!(at_path(&doc, &path("choices.9.n")), None);
        assert_eq!(at_path(&doc, &path("usage.total_tokens.x")), None);
        assert_eq!(at_path(&doc, &path("nope")), None);
    }
}
