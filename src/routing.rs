//! Routing: by host first, then by the longest path prefix on whole segments, then by method.
//!
//! 1. The most specific host wins: an exact host, then the longest wildcard
//!    (`*.example.com` covers every name ending in `.example.com`, at any depth), then the
//!    routes without a host. Only that group's routes are considered, as a virtual host in
//!    nginx or Envoy: a path no route of the group has is a 404 even if a route without a
//!    host has it.
//! 2. Within the group the longest whole-segment prefix wins: `/a` matches `/a` and `/a/x`,
//!    never `/ab`.
//! 3. The route's `methods` (when it names any) are checked by the caller with
//!    [`Methods::allows`]; a mismatch is a 405 with [`Methods::allow_header`].

use http::Method;
use std::borrow::Cow;
use std::collections::HashMap;

/// Routes grouped by host, each group a [`PathRouter`].
#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<Box<str>, PathRouter<T>, ahash::RandomState>,
    /// Keyed by the suffix with its leading dot (`.example.com` for `*.example.com`).
    wildcard: HashMap<Box<str>, PathRouter<T>, ahash::RandomState>,
    any_host: PathRouter<T>,
}

/// Where a route applies: which host (as written, lower case) and which canonical prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub host: Option<String>,
    pub prefix: String,
}

impl<T> Router<T> {
    /// Builds a router; later duplicates replace earlier ones (validation refuses them first).
    pub fn new(routes: impl IntoIterator<Item = (RouteKey, T)>) -> Self {
        let mut groups: HashMap<Option<String>, Vec<(String, T)>> = HashMap::new();
        for (key, target) in routes {
            groups
                .entry(key.host.map(|h| h.to_ascii_lowercase()))
                .or_default()
                .push((key.prefix, target));
        }
        let mut router = Router {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            any_host: PathRouter::new(Vec::new()),
        };
        for (host, routes) in groups {
            let paths = PathRouter::new(routes);
            match host {
                None => router.any_host = paths,
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => {
                        router.wildcard.insert(suffix.into(), paths);
                    }
                    None => {
                        router.exact.insert(host.into_boxed_str(), paths);
                    }
                },
            }
        }
        router
    }

    /// The route for a request to `host` (already [`normalize_host`]d) and `path` (already
    /// [`crate::path::normalize`]d).
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        self.group(host).lookup(path)
    }

    /// The routes a request to `host` chooses among.
    fn group(&self, host: Option<&str>) -> &PathRouter<T> {
        let Some(host) = host else {
            return &self.any_host;
        };
        if let Some(group) = self.exact.get(host) {
            return group;
        }
        if !self.wildcard.is_empty() {
            // `a.b.example.com` tries `.b.example.com`, then `.example.com`, then `.com`:
            // the longest suffix first, one probe per label.
            let mut from = 0;
            while let Some(dot) = host[from..].find('.') {
                let suffix = &host[from + dot..];
                if let Some(group) = self.wildcard.get(suffix) {
                    return group;
                }
                from += dot + 1;
            }
        }
        &self.any_host
    }

    pub fn len(&self) -> usize {
        self.any_host.len()
            + self.exact.values().map(PathRouter::len).sum::<usize>()
            + self.wildcard.values().map(PathRouter::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Maps canonical prefixes (see `config::validate::canonical_prefix`) to routes.
///
/// Lookup walks the request path's segment boundaries from the longest candidate down, one
/// hash probe each, so its cost depends on the path's depth, not on the number of routes.
#[derive(Debug)]
pub struct PathRouter<T> {
    by_prefix: HashMap<Box<str>, T, ahash::RandomState>,
    root: Option<T>,
    longest: usize,
}

impl<T> PathRouter<T> {
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut by_prefix = HashMap::default();
        let mut root = None;
        let mut longest = 0;
        for (prefix, target) in routes {
            if prefix == "/" {
                root = Some(target);
            } else {
                longest = longest.max(prefix.len());
                by_prefix.insert(prefix.into_boxed_str(), target);
            }
        }
        PathRouter {
            by_prefix,
            root,
            longest,
        }
    }

    /// The route whose prefix is the longest whole-segment prefix of `path`.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        let mut end = path.len();
        if end > self.longest {
            // No prefix is longer than `longest`: start at the last boundary within it.
            end = match path.as_bytes().get(self.longest) {
                Some(b'/') => self.longest,
                _ => path[..self.longest.min(path.len())].rfind('/').unwrap_or(0),
            };
        }
        while end > 0 {
            let candidate = &path[..end];
            if let Some(target) = self.by_prefix.get(candidate) {
                return Some(target);
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
        self.root.as_ref()
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len() + usize::from(self.root.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The host a request names, as routing compares it: lower case, without a port and
/// without a trailing dot. `None` for an empty host.
///
/// `[::1]:8080` keeps its brackets (`[::1]`), so an IPv6 literal never looks like a name.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The methods a route accepts; empty accepts every method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Methods {
    allowed: Vec<Method>,
    /// The `Allow` header of a 405, prepared once.
    allow_header: String,
}

impl Methods {
    /// From validated method names. `GET` implies `HEAD`, as in HTTP (a HEAD is a GET
    /// without the body) and nginx's `limit_except`.
    pub fn new(names: &[String]) -> Methods {
        let mut allowed: Vec<Method> = names
            .iter()
            .filter_map(|n| Method::from_bytes(n.as_bytes()).ok())
            .collect();
        if allowed.contains(&Method::GET) && !allowed.contains(&Method::HEAD) {
            allowed.push(Method::HEAD);
        }
        let allow_header = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Methods {
            allowed,
            allow_header,
        }
    }

    pub fn allows(&self, method: &Method) -> bool {
        self.allowed.is_empty() || self.allowed.contains(method)
    }

    /// `GET, HEAD, POST`: the value of the `Allow` header on a 405.
    pub fn allow_header(&self) -> &str {
        &self.allow_header
    }

    pub fn is_any(&self) -> bool {
        self.allowed.is_empty()
    }
}

/// The path the backend sees when the route strips its prefix: `/a/x` → `/x`, `/a` → `/`.
pub fn strip_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    if prefix == "/" {
        return path;
    }
    match path.strip_prefix(prefix) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(prefixes: &[&str]) -> PathRouter<String> {
        PathRouter::new(prefixes.iter().map(|p| (p.to_string(), p.to_string())))
    }

    fn hosts(routes: &[(Option<&str>, &str)]) -> Router<String> {
        Router::new(routes.iter().map(|(h, p)| {
            (
                RouteKey {
                    host: h.map(str::to_string),
                    prefix: p.to_string(),
                },
                format!("{}{p}", h.unwrap_or("")),
            )
        }))
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let r = router(&["/a", "/a/b", "/b"]);
        assert_eq!(r.lookup("/a").map(String::as_str), Some("/a"));
        assert_eq!(r.lookup("/a/").map(String::as_str), Some("/a"));
        assert_eq!(r.lookup("/a/x").map(String::as_str), Some("/a"));
        assert_eq!(r.lookup("/a/b").map(String::as_str), Some("/a/b"));
        assert_eq!(r.lookup("/a/b/c/d").map(String::as_str), Some("/a/b"));
        assert_eq!(r.lookup("/a/bc").map(String::as_str), Some("/a"));
        assert_eq!(r.lookup("/ab"), None);
        assert_eq!(r.lookup("/"), None);
        assert_eq!(r.lookup("/c/a"), None);
    }

    #[test]
    fn root_catches_the_rest() {
        let r = router(&["/", "/api/v1"]);
        assert_eq!(r.lookup("/x").map(String::as_str), Some("/"));
        assert_eq!(r.lookup("/").map(String::as_str), Some("/"));
        assert_eq!(
            r.lookup("/api/v1/users").map(String::as_str),
            Some("/api/v1")
        );
        assert_eq!(r.lookup("/api/v10").map(String::as_str), Some("/"));
        assert_eq!(r.lookup("/api").map(String::as_str), Some("/"));
    }

    #[test]
    fn long_paths_skip_to_the_longest_prefix_length() {
        let r = router(&["/a/b"]);
        assert_eq!(
            r.lookup("/a/b/c/d/e/f/g/h").map(String::as_str),
            Some("/a/b")
        );
        assert_eq!(r.lookup("/a/bcdefgh").map(String::as_str), None);
        assert_eq!(r.lookup("/a/b/").map(String::as_str), Some("/a/b"));
    }

    #[test]
    fn empty_router_matches_nothing() {
        let r = hosts(&[]);
        assert!(r.is_empty());
        assert_eq!(r.lookup(None, "/a"), None);
        assert_eq!(r.lookup(Some("x.example.com"), "/a"), None);
    }

    #[test]
    fn the_most_specific_host_wins() {
        let r = hosts(&[
            (None, "/"),
            (Some("api.example.com"), "/"),
            (Some("*.example.com"), "/"),
            (Some("*.eu.example.com"), "/"),
            (Some("*.example.com"), "/deep"),
        ]);
        let at = |host: Option<&str>, path: &str| r.lookup(host, path).cloned();
        assert_eq!(
            at(Some("api.example.com"), "/x").unwrap(),
            "api.example.com/"
        );
        assert_eq!(at(Some("www.example.com"), "/x").unwrap(), "*.example.com/");
        assert_eq!(
            at(Some("a.b.example.com"), "/deep/x").unwrap(),
            "*.example.com/deep"
        );
        assert_eq!(
            at(Some("fr.eu.example.com"), "/").unwrap(),
            "*.eu.example.com/"
        );
        // A wildcard does not cover the bare domain.
        assert_eq!(at(Some("example.com"), "/").unwrap(), "/");
        assert_eq!(at(Some("other.org"), "/").unwrap(), "/");
        assert_eq!(at(None, "/").unwrap(), "/");
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn a_host_group_does_not_fall_back_to_routes_without_a_host() {
        let r = hosts(&[(None, "/b"), (Some("api.example.com"), "/a")]);
        assert_eq!(r.lookup(Some("api.example.com"), "/b"), None);
        assert!(r.lookup(Some("www.example.com"), "/b").is_some());
    }

    #[test]
    fn hosts_are_normalized_for_comparison() {
        let n = |raw: &str| normalize_host(raw).map(|h| h.into_owned());
        assert_eq!(
            n("API.Example.COM:8443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(n("api.example.com.").as_deref(), Some("api.example.com"));
        assert_eq!(n("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(n("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(n("").as_deref(), None);
        assert_eq!(n(":80").as_deref(), None);
        assert!(matches!(
            normalize_host("plain.example"),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn methods_allow_what_they_name_and_get_implies_head() {
        let m = Methods::new(&["GET".into(), "POST".into()]);
        assert!(m.allows(&Method::GET));
        assert!(m.allows(&Method::HEAD));
        assert!(m.allows(&Method::POST));
        assert!(!m.allows(&Method::DELETE));
        assert_eq!(m.allow_header(), "GET, POST, HEAD");
        let any = Methods::new(&[]);
        assert!(any.allows(&Method::DELETE));
        assert!(any.is_any());
    }

    #[test]
    fn strips_whole_prefix() {
        assert_eq!(strip_prefix("/a/x/y", "/a"), "/x/y");
        assert_eq!(strip_prefix("/a", "/a"), "/");
        assert_eq!(strip_prefix("/a/", "/a"), "/");
        assert_eq!(strip_prefix("/x", "/"), "/x");
    }
}
