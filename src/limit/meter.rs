//! Reads the cost a response reports while it streams past: a header, a dotted path in a
//! JSON body, or the same path in the `data:` events of a `text/event-stream` (OpenAI and
//! Anthropic report usage in their last event). It only looks at the chunks the proxy
//! forwards; it never holds one back.
//!
//! Memory per request is bounded: a JSON body is kept whole up to [`JSON_WHOLE`] bytes and
//! parsed at its end; past that only its last [`JSON_TAIL`] bytes are kept, and the value
//! is read from the last occurrence of the path's first key in them (APIs put the usage
//! last). An SSE event is kept up to [`EVENT_MAX`] bytes and parsed when it ends; a longer
//! event is skipped. Parsing is serde_json's, on those bounded buffers.

use super::settle::{self, Unusable};
use crate::config::CostSpec;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// A JSON body up to this size is parsed whole.
pub const JSON_WHOLE: usize = 256 * 1024;
/// Past [`JSON_WHOLE`], the bytes kept from the end of a JSON body.
pub const JSON_TAIL: usize = 64 * 1024;
/// The largest SSE event read; longer ones are skipped.
pub const EVENT_MAX: usize = 64 * 1024;

/// What a response has reported so far, for the costs of one route's policies.
#[derive(Debug, Default)]
pub struct Meter {
    /// Header names and the value the response carried.
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// Dotted paths and the last non-null value found at each.
    paths: Vec<(Vec<String>, Option<Value>)>,
    body: Body,
}

#[derive(Debug, Default)]
enum Body {
    /// No header seen yet, or no path to read.
    #[default]
    Idle,
    Json {
        buf: Vec<u8>,
        /// The body outgrew [`JSON_WHOLE`]: `buf` holds its tail.
        tail: bool,
    },
    Sse {
        /// The line being read.
        line: Vec<u8>,
        /// The event's `data:` lines so far, joined by `\n`.
        data: Vec<u8>,
        /// The event outgrew [`EVENT_MAX`]: skip to its end.
        skipping: bool,
        /// The previous chunk ended in `\r`: a `\n` next belongs to it.
        after_cr: bool,
        /// Bytes of the current line were seen in an earlier chunk.
        seen: bool,
    },
    /// The body ended (JSON parsed).
    Done,
}

impl Meter {
    /// A meter for `costs`; `None` when none of them comes from the response.
    pub fn new<'a>(costs: impl IntoIterator<Item = &'a CostSpec>) -> Option<Meter> {
        let mut meter = Meter::default();
        for cost in costs {
            match cost {
                CostSpec::ResponseHeader(name) if !meter.headers.iter().any(|(n, _)| n == name) => {
                    meter.headers.push((name.clone(), None));
                }
                CostSpec::ResponseJson(path) if !meter.paths.iter().any(|(p, _)| p == path) => {
                    meter.paths.push((path.clone(), None));
                }
                _ => {}
            }
        }
        (!meter.headers.is_empty() || !meter.paths.is_empty()).then_some(meter)
    }

    /// Reads the response header: header costs, and how to read the body.
    pub fn on_header(&mut self, headers: &http::HeaderMap) {
        for (name, value) in &mut self.headers {
            *value = headers.get(name.as_str()).map(|v| v.as_bytes().to_vec());
        }
        if self.paths.is_empty() {
            return;
        }
        let sse = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            });
        self.body = if sse {
            Body::Sse {
                line: Vec::new(),
                data: Vec::new(),
                skipping: false,
                after_cr: false,
                seen: false,
            }
        } else {
            Body::Json {
                buf: Vec::new(),
                tail: false,
            }
        };
    }

    /// Reads one chunk of the body as it goes by.
    pub fn on_body(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Json { buf, tail } => {
                buf.extend_from_slice(chunk);
                if buf.len() > JSON_WHOLE || *tail {
                    *tail = true;
                    if buf.len() > JSON_TAIL {
                        let cut = buf.len() - JSON_TAIL;
                        buf.drain(..cut);
                    }
                }
            }
            Body::Sse { .. } => self.read_sse(chunk),
            Body::Idle | Body::Done => {}
        }
    }

    /// The body ended as the backend meant it to (not cut).
    pub fn on_end(&mut self) {
        if let Body::Json { buf, tail } = std::mem::replace(&mut self.body, Body::Done) {
            if tail {
                for (path, value) in &mut self.paths {
                    *value = value_in_tail(&buf, path);
                }
            } else {
                for (path, value) in &mut self.paths {
                    if let Ok(found) = value_at(&buf, path) {
                        *value = found;
                    }
                }
            }
        }
    }

    /// The cost `spec` reported, or why it cannot be charged.
    pub fn cost(&self, spec: &CostSpec, max_cost: u64) -> Result<u64, Unusable> {
        match spec {
            CostSpec::ResponseHeader(name) => match self.headers.iter().find(|(n, _)| n == name) {
                Some((_, Some(value))) => settle::text_cost(value, max_cost),
                _ => Err(Unusable::Missing),
            },
            CostSpec::ResponseJson(path) => {
                let value = self
                    .paths
                    .iter()
                    .find(|(p, _)| p == path)
                    .and_then(|(_, v)| v.as_ref());
                settle::json_cost(value, max_cost)
            }
            _ => Err(Unusable::Missing),
        }
    }

    fn read_sse(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let Body::Sse {
                line,
                data,
                skipping,
                after_cr,
                seen,
            } = &mut self.body
            else {
                return;
            };
            if std::mem::take(after_cr) && rest[0] == b'\n' {
                rest = &rest[1..];
                continue;
            }
            let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                *seen = true;
                if !*skipping {
                    line.extend_from_slice(rest);
                    if line.len() + data.len() > EVENT_MAX {
                        line.clear();
                        data.clear();
                        *skipping = true;
                    }
                }
                return;
            };
            let blank = end == 0 && !std::mem::take(seen);
            *seen = false;
            *after_cr = rest[end] == b'\r';
            let text = &rest[..end];
            rest = &rest[end + 1..];
            if *skipping {
                // Skip to the blank line that ends the oversized event.
                *skipping = !blank;
                line.clear();
                continue;
            }
            line.extend_from_slice(text);
            let line = std::mem::take(line);
            self.sse_line(&line, blank);
        }
    }

    /// One complete line of an event stream; `blank` ends the event.
    fn sse_line(&mut self, text: &[u8], blank: bool) {
        let Body::Sse { data, skipping, .. } = &mut self.body else {
            return;
        };
        if blank {
            let event = std::mem::take(data);
            if !event.is_empty() {
                self.sse_event(&event);
            }
            return;
        }
        let Some(value) = text.strip_prefix(b"data:") else {
            // `event:`, `id:`, comments: nothing to read.
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if data.len() + value.len() + 1 > EVENT_MAX {
            data.clear();
            *skipping = true;
            return;
        }
        if !data.is_empty() {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
    }

    fn sse_event(&mut self, data: &[u8]) {
        // `[DONE]` and other non-JSON events carry no usage.
        for (path, value) in &mut self.paths {
            if let Ok(Some(found)) = value_at(data, path) {
                if !found.is_null() {
                    *value = Some(found);
                }
            }
        }
    }
}

/// The value at `path` in the JSON document `doc`, as `settle::at_path` finds it in the
/// document parsed whole (an object's member by name, the last of duplicates; an array's
/// element by a whole-number step), but without building the rest: every other member is
/// skipped by serde_json as it is read. An error when `doc` is not one JSON value.
/// Building a whole `Value` for each SSE event cost about 5,000 instructions an event.
fn value_at(doc: &[u8], path: &[String]) -> Result<Option<Value>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(doc);
    let found = PathSeed(path).deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

/// Reads a JSON value, keeping only what lies at its path.
struct PathSeed<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        match self.0.split_first() {
            None => Value::deserialize(d).map(Some),
            Some((step, rest)) => d.deserialize_any(Step { step, rest }),
        }
    }
}

/// One step of a path into whatever value comes: a member of an object, an element of an
/// array; nothing below a scalar.
struct Step<'p> {
    step: &'p str,
    rest: &'p [String],
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.step))? {
            if matches {
                // A later duplicate replaces an earlier one, as in a parsed `Value`.
                found = map.next_value_seed(PathSeed(self.rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.step.parse::<usize>().ok();
        let mut found = None;
        for i in 0.. {
            if index == Some(i) {
                match seq.next_element_seed(PathSeed(self.rest))? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
        }
        Ok(found)
    }
}

/// Whether an object's key is the path's step, compared without copying the key.
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// The value at `path` in the tail of a JSON body too large to keep whole: after the last
/// occurrence of its first key, parsed by serde_json from there.
fn value_in_tail(tail: &[u8], path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let needle = serde_json::to_vec(first).ok()?;
    let mut end = tail.len();
    while let Some(at) = find_last(&tail[..end], &needle) {
        let after = &tail[at + needle.len()..];
        let after = trim_start(after);
        if let Some(value) = after.strip_prefix(b":") {
            let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Value>();
            if let Some(Ok(doc)) = values.next() {
                return settle::at_path(&doc, rest).cloned();
            }
        }
        end = at;
    }
    None
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&i| &haystack[i..i + needle.len()] == needle)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_cost() -> CostSpec {
        CostSpec::ResponseJson(vec!["usage".into(), "total_tokens".into()])
    }

    fn meter(content_type: &str) -> Meter {
        let mut m = Meter::new([&json_cost()]).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        m.on_header(&h);
        m
    }

    #[test]
    fn a_fixed_cost_needs_no_meter() {
        assert!(Meter::new([&CostSpec::Fixed(1), &CostSpec::Header("x".into())]).is_none());
    }

    #[test]
    fn a_json_body_in_any_chunks() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":10,"total_tokens":100}}"#;
        for split in 1..body.len() {
            let mut m = meter("application/json");
            m.on_body(&body[..split]);
            m.on_body(&body[split..]);
            m.on_end();
            assert_eq!(m.cost(&json_cost(), 1_000), Ok(100), "split at {split}");
        }
    }

    #[test]
    fn a_json_body_cut_short_costs_the_reserve() {
        let mut m = meter("application/json");
        m.on_body(br#"{"usage":{"total_tokens":100}}"#);
        // No on_end: the stream was cut.
        assert_eq!(m.cost(&json_cost(), 1_000), Err(Unusable::Missing));
    }

    #[test]
    fn a_large_json_body_is_read_from_its_tail_in_bounded_memory() {
        let mut m = meter("application/json");
        m.on_body(b"{\"text\":\"");
        let filler = vec![b'a'; 16 * 1024];
        for _ in 0..64 {
            m.on_body(&filler);
            if let Body::Json { buf, .. } = &m.body {
                assert!(buf.len() <= JSON_WHOLE + filler.len());
            }
        }
        m.on_body(br#"", "usage": {"total_tokens": 4321}}"#);
        m.on_end();
        assert_eq!(m.cost(&json_cost(), 1_000_000), Ok(4321));
    }

    #[test]
    fn sse_usage_in_the_last_event_whatever_the_chunking() {
        let stream = concat!(
            ": keep-alive\n\n",
            "event: delta\ndata: {\"choices\":[{\"delta\":\"hi\"}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\r\ndata: \"usage\":{\"total_tokens\":250}}\r\n\r\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for split in 1..stream.len() {
            let mut m = meter("text/event-stream; charset=utf-8");
            m.on_body(&stream[..split]);
            m.on_body(&stream[split..]);
            assert_eq!(m.cost(&json_cost(), 1_000), Ok(250), "split at {split}");
        }
        let mut m = meter("text/event-stream");
        for b in stream {
            m.on_body(std::slice::from_ref(b));
        }
        assert_eq!(m.cost(&json_cost(), 1_000), Ok(250), "byte by byte");
    }

    #[test]
    fn sse_cut_before_the_usage_costs_the_reserve_and_huge_events_are_skipped() {
        let mut m = meter("text/event-stream");
        m.on_body(b"data: {\"usage\":{\"total_tokens\":");
        assert_eq!(m.cost(&json_cost(), 1_000), Err(Unusable::Missing));
        let mut m = meter("text/event-stream");
        m.on_body(b"data: \"");
        for _ in 0..10 {
            m.on_body(&vec![b'x'; EVENT_MAX / 4]);
        }
        m.on_body(b"\"\n\ndata: {\"usage\":{\"total_tokens\":7}}\n\n");
        if let Body::Sse { line, data, .. } = &m.body {
            assert!(line.len() + data.len() <= EVENT_MAX);
        }
        assert_eq!(m.cost(&json_cost(), 1_000), Ok(7));
    }

    #[test]
    fn reading_only_the_path_finds_what_the_parsed_document_holds() {
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        let docs = [
            r#"{"id":"x","usage":{"prompt_tokens":10,"total_tokens":100}}"#,
            r#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2}}"#,
            r#"{"usage":{"total_tokens":1},"usage":{"other":2}}"#,
            r#"{"u\u0073age":{"total_tokens":"12"},"x":[1,{"a":null},"s\"}"]}"#,
            r#"{"choices":[{"usage":{"total_tokens":5}},{"usage":{"total_tokens":6}}]}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"total_tokens":null}}"#,
            r#"{"usage":{"total_tokens":-3.5e2}}"#,
            r#"{"usage":[7,8]}"#,
            r#"{"usage":{"total_tokens":{"deep":[true,false]}}}"#,
            r#"[{"usage":{"total_tokens":9}}]"#,
            r#""usage""#,
            "42",
            "  {\"usage\" : {\"total_tokens\" : 3 } }  ",
            r#"{"usage":{"total_tokens":3}"#,
            r#"{"usage":{"total_tokens":3}} trailing"#,
            r#"{"usage":{"total_tokens":3},}"#,
            "[DONE]",
            "",
        ];
        let paths = [
            "usage.total_tokens",
            "usage",
            "choices.1.usage.total_tokens",
            "choices.x",
            "0.usage.total_tokens",
            "usage.1",
            "x.1.a",
            "x.2",
        ];
        for doc in docs {
            let parsed = serde_json::from_slice::<Value>(doc.as_bytes());
            for p in paths {
                let p = path(p);
                let whole = parsed.as_ref().map(|d| settle::at_path(d, &p).cloned());
                let read = value_at(doc.as_bytes(), &p);
                match (&whole, &read) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{doc} at {p:?}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{doc} at {p:?}: whole {whole:?}, path only {read:?}"),
                }
            }
        }
    }

    #[test]
    fn header_costs() {
        let spec = CostSpec::ResponseHeader("x-usage".into());
        let mut m = Meter::new([&spec]).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-usage", "300".parse().unwrap());
        m.on_header(&h);
        assert_eq!(m.cost(&spec, 1_000), Ok(300));
        m.on_header(&http::HeaderMap::new());
        assert_eq!(m.cost(&spec, 1_000), Err(Unusable::Missing));
    }
}
