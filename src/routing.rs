//! Longest-prefix routing on whole path segments: `/a` matches `/a` and `/a/x`, never `/ab`.

use std::collections::HashMap;

/// Maps canonical prefixes (see `config::validate::canonical_prefix`) to routes.
///
/// Lookup walks the request path's segment boundaries from the longest candidate down, one
/// hash probe each, so its cost depends on the path's depth, not on the number of routes.
#[derive(Debug)]
pub struct Router<T> {
    by_prefix: HashMap<Box<str>, T, ahash::RandomState>,
    root: Option<T>,
    longest: usize,
}

impl<T> Router<T> {
    /// Builds a router; later duplicates replace earlier ones (validation refuses them first).
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
        Router {
            by_prefix,
            root,
            longest,
        }
    }

    /// The route whose prefix is the longest whole-segment prefix of `path`.
    /// `path` must be normalized (see [`crate::path::normalize`]).
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

    fn router(prefixes: &[&str]) -> Router<String> {
        Router::new(prefixes.iter().map(|p| (p.to_string(), p.to_string())))
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
        let r = router(&[]);
        assert!(r.is_empty());
        assert_eq!(r.lookup("/a"), None);
    }

    #[test]
    fn strips_whole_prefix() {
        assert_eq!(strip_prefix("/a/x/y", "/a"), "/x/y");
        assert_eq!(strip_prefix("/a", "/a"), "/");
        assert_eq!(strip_prefix("/a/", "/a"), "/");
        assert_eq!(strip_prefix("/x", "/"), "/x");
    }
}
