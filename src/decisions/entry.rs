//! A decision in words, as `/admin/logs` and `/admin/events` return it. Built by the drain
//! and the stream from a [`Record`], never on the request path.

use super::{Names, Record};
use serde::Serialize;
use std::borrow::Cow;
use std::net::IpAddr;

#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub ts: String,
    pub request_id: Cow<'a, str>,
    pub route: &'a str,
    pub client: IpAddr,
    /// The client's network as the deciding policy keys it (`2001:db8:1:1::/64`), when
    /// that policy keys by client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// The `sub` of the request's verified JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub status: u16,
    pub policy: Option<&'a str>,
    /// `allowed`, `limited`, `shadow_limited`, `failed_open`, `unavailable`, or
    /// `unauthorized` for a missing or unknown API key.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// What the response cost, for a route with a policy that charges it
    /// (`cost: response_header:…` or `response_json:…`): the reserve it held at admission
    /// is replaced by this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_cost: Option<u64>,
}

impl<'a> Entry<'a> {
    /// The entry of a record that limits looked at; `None` for one kept for the
    /// dashboard's series only.
    pub fn of(r: &'a Record, names: &'a Names) -> Option<Entry<'a>> {
        let limits = r.limits?;
        Some(Entry {
            ts: rfc3339_ms(r.unix_ms),
            request_id: r.request_id.display(),
            route: names.route(r.route),
            client: r.client,
            network: limits.policy.and_then(|p| names.network(p, r.client)),
            api_key_id: r.key.as_deref().map(|k| k.id.as_str()),
            tenant: r
                .key
                .as_deref()
                .map(|k| k.tenant.as_str())
                .or_else(|| r.user.as_deref().and_then(|v| v.tenant.as_deref())),
            user: r.user.as_deref().and_then(|v| v.user.as_deref()),
            method: r.method.display(),
            path: r.path.display(),
            status: r.status,
            policy: limits.policy.map(|p| names.policy(p)),
            outcome: limits.outcome.name(),
            remaining: limits.remaining(),
            settled_cost: limits.settled_cost(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `2026-12-02T13:54:50.123Z`, as the request path wrote it before records.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_before() {
        assert_eq!(rfc3339_ms(1_796_219_690_123), "2026-12-02T13:54:50.123Z");
    }
}
