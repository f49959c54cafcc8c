//! One request's decision as the request path leaves it: a fixed-size value with no heap
//! allocation, made of integers, interned ids and short inline text. Everything that turns
//! it into words (names, JSON, RFC 3339 time) happens later, off the request path.

use crate::identity::KeyRecord;
use std::net::IpAddr;
use std::sync::Arc;

/// Bytes of the path kept in a record. Longer paths are cut at a character boundary and
/// logged with a trailing `…`; 64 bytes hold typical API paths with ids in them, and
/// keep a record (with its settled cost) within three cache lines.
pub const PATH_BYTES: usize = 64;
/// Bytes of a client's own `X-Request-Id` kept (a UUID's 36 fit).
pub const ID_BYTES: usize = 36;

/// Text kept inline, cut to at most `N` bytes.
#[derive(Clone, Copy)]
pub struct InlineText<const N: usize> {
    len: u8,
    truncated: bool,
    bytes: [u8; N],
}

impl<const N: usize> InlineText<N> {
    pub fn new(text: &str) -> Self {
        let mut len = text.len().min(N).min(u8::MAX as usize);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; N];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        InlineText {
            len: len as u8,
            truncated: len < text.len(),
            bytes,
        }
    }

    /// The text kept (a prefix of the original on a character boundary).
    pub fn kept(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The text as logged: cut text ends in `…`.
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        if self.truncated {
            format!("{}…", self.kept()).into()
        } else {
            self.kept().into()
        }
    }
}

/// A request's id: tollgate's own (a random 128-bit number, written as 32 hex digits) or
/// the client's `X-Request-Id`.
#[derive(Clone, Copy)]
pub enum RequestId {
    /// Two halves, so the record keeps 8-byte alignment.
    Ours(u64, u64),
    Given(InlineText<ID_BYTES>),
}

impl RequestId {
    pub fn ours(id: u128) -> Self {
        RequestId::Ours((id >> 64) as u64, id as u64)
    }

    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        match self {
            RequestId::Ours(hi, lo) => {
                format!("{:032x}", (u128::from(*hi) << 64) | u128::from(*lo)).into()
            }
            RequestId::Given(text) => text.display(),
        }
    }
}

/// The request method: the standard ones by index, others by their first bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other(InlineText<8>),
}

impl Verb {
    pub fn of(method: &http::Method) -> Self {
        use http::Method as M;
        match *method {
            M::GET => Verb::Get,
            M::HEAD => Verb::Head,
            M::POST => Verb::Post,
            M::PUT => Verb::Put,
            M::DELETE => Verb::Delete,
            M::PATCH => Verb::Patch,
            M::OPTIONS => Verb::Options,
            M::CONNECT => Verb::Connect,
            M::TRACE => Verb::Trace,
            _ => Verb::Other(InlineText::new(method.as_str())),
        }
    }

    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Verb::Get => "GET".into(),
            Verb::Head => "HEAD".into(),
            Verb::Post => "POST".into(),
            Verb::Put => "PUT".into(),
            Verb::Delete => "DELETE".into(),
            Verb::Patch => "PATCH".into(),
            Verb::Options => "OPTIONS".into(),
            Verb::Connect => "CONNECT".into(),
            Verb::Trace => "TRACE".into(),
            Verb::Other(text) => text.display(),
        }
    }
}

impl<const N: usize> PartialEq for InlineText<N> {
    fn eq(&self, other: &Self) -> bool {
        self.kept() == other.kept() && self.truncated == other.truncated
    }
}

impl<const N: usize> Eq for InlineText<N> {}

/// What a request's limits came to, as logged: a policy's outcome, or a refusal before
/// any policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Limit(crate::limit::Outcome),
    /// A missing or unknown API key on a route that requires one.
    Unauthorized,
    /// A request whose cost header a policy could not read.
    InvalidCost,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Limit(o) => o.name(),
            Outcome::Unauthorized => "unauthorized",
            Outcome::InvalidCost => "invalid_cost",
        }
    }
}

impl From<crate::limit::Outcome> for Outcome {
    fn from(o: crate::limit::Outcome) -> Self {
        Outcome::Limit(o)
    }
}

/// How the dashboard's per-second series counts a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Allowed = 0,
    Limited = 1,
    Error = 2,
}

/// A policy's interned id (see `DecisionHub::policy_id`).
pub type PolicyId = u16;
/// A route label's interned id.
pub type RouteId = u16;

/// What a route's limits came to, for the log: present on routes with limits or a key
/// requirement.
#[derive(Clone, Copy)]
pub struct Limits {
    pub policy: Option<PolicyId>,
    pub outcome: Outcome,
    /// `u64::MAX` for none: half the size of an `Option`.
    remaining: u64,
    /// What the response cost, for a policy that charges it: `u64::MAX` for none.
    settled_cost: u64,
}

impl Limits {
    pub fn new(policy: Option<PolicyId>, outcome: Outcome, remaining: Option<u64>) -> Self {
        Limits {
            policy,
            outcome,
            remaining: remaining.unwrap_or(u64::MAX),
            settled_cost: u64::MAX,
        }
    }

    /// With the cost the response settled, for a route whose policy charges it.
    pub fn with_settled_cost(self, cost: Option<u64>) -> Self {
        Limits {
            settled_cost: cost.unwrap_or(u64::MAX),
            ..self
        }
    }

    pub fn remaining(&self) -> Option<u64> {
        (self.remaining != u64::MAX).then_some(self.remaining)
    }

    pub fn settled_cost(&self) -> Option<u64> {
        (self.settled_cost != u64::MAX).then_some(self.settled_cost)
    }
}

/// One request, as the request path hands it over. The API key is the request's own
/// reference to its record, moved here when the request ends: no copy of its text.
#[derive(Clone)]
pub struct Record {
    pub unix_ms: u64,
    pub request_id: RequestId,
    pub client: IpAddr,
    pub key: Option<Arc<KeyRecord>>,
    /// The request's verified token, moved here like the key: its user, no copy.
    pub user: Option<Arc<crate::identity::jwt::Verified>>,
    pub route: RouteId,
    pub status: u16,
    pub kind: Kind,
    pub method: Verb,
    /// `None` for a request no limit looked at: it feeds the dashboard's series only.
    pub limits: Option<Limits>,
    pub path: InlineText<PATH_BYTES>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_small() {
        assert!(
            std::mem::size_of::<Record>() <= 192,
            "{}",
            std::mem::size_of::<Record>()
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let t = InlineText::<4>::new("/ab");
        assert_eq!((t.kept(), t.truncated()), ("/ab", false));
        let t = InlineText::<4>::new("/abcdef");
        assert_eq!(t.display(), "/abc…");
        // "é" is two bytes: a cut through it moves back before it.
        let t = InlineText::<4>::new("/abé");
        assert_eq!((t.kept(), t.truncated()), ("/ab", true));
    }

    #[test]
    fn request_ids_read_back_as_written() {
        let id = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(
            RequestId::ours(id).display(),
            "0123456789abcdeffedcba9876543210"
        );
        assert_eq!(
            RequestId::Given(InlineText::new("req-1")).display(),
            "req-1"
        );
    }

    #[test]
    fn methods_keep_their_names() {
        assert_eq!(Verb::of(&http::Method::DELETE).display(), "DELETE");
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(Verb::of(&purge).display(), "PURGE");
    }
}
