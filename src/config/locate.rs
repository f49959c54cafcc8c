//! Where each node of a YAML document sits, so semantic errors can point at a line and column.
//!
//! serde_yaml reports positions for syntax and type errors only; checks that run after
//! deserialization (a route naming a missing upstream, a duplicate prefix) look their node
//! up here by its path, written the way serde_yaml writes paths: `routes[1].upstream`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
pub use yaml_rust2::scanner::TScalarStyle as ScalarStyle;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Self {
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Positions of every key and value in a document, by path.
#[derive(Debug, Default)]
pub struct Locations {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl Locations {
    /// Indexes `text`. A document that does not parse yields an empty index; serde_yaml
    /// reports the syntax error itself.
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Locations::default();
        }
        walker.found
    }

    /// The position of the value at `path`, else of its key, else of the nearest ancestor.
    pub fn of(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(p) = self.values.get(path).or_else(|| self.keys.get(path)) {
                return *p;
            }
            // A setting that takes one value or a list (`listen`) is named without an index
            // when there is one entry, which the file may still write as a one-item list.
            if let Some(p) = as_one_item_list(path).and_then(|listed| {
                self.values
                    .get(&listed)
                    .or_else(|| self.keys.get(&listed))
                    .copied()
            }) {
                return p;
            }
            match parent(path) {
                Some(up) => path = up,
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

/// `listen.tls` → `listen[0].tls`: the first segment as the only item of a list.
fn as_one_item_list(path: &str) -> Option<String> {
    let first = path.split(['.', '[']).next()?;
    let rest = &path[first.len()..];
    (!first.is_empty() && !rest.starts_with('[')).then(|| format!("{first}[0]{rest}"))
}

fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

/// A scalar value (never a mapping key) and where its source text starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarSite {
    pub path: String,
    /// The offset in chars of its first source character (the opening quote, if quoted).
    pub start: usize,
    pub style: ScalarStyle,
    pub value: String,
}

/// The scalar values of `text` containing `needle`, in document order; none if the
/// document does not parse (serde_yaml reports why).
pub fn values_containing(text: &str, needle: char) -> Vec<ScalarSite> {
    let mut walker = Walker {
        needle: Some(needle),
        ..Walker::default()
    };
    let mut parser = Parser::new_from_str(text);
    if parser.load(&mut walker, false).is_err() {
        return Vec::new();
    }
    walker.sites
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    found: Locations,
    /// Collect the scalar values containing this character into `sites`.
    needle: Option<char>,
    sites: Vec<ScalarSite>,
}

impl Walker {
    /// Called for each node; returns the node's path, or `None` if the node is a mapping key.
    fn place_node(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next }) => {
                let here = format!("{path}[{next}]");
                *next += 1;
                self.found.values.insert(here.clone(), mark.into());
                Some(here)
            }
            Some(Frame::Mapping { path, key }) => match key.take() {
                None => {
                    let name = scalar.unwrap_or("?").to_string();
                    let here = join(path, &name);
                    self.found.keys.insert(here, mark.into());
                    *key = Some(name);
                    None
                }
                Some(name) => {
                    let here = join(path, &name);
                    self.found.values.insert(here.clone(), mark.into());
                    Some(here)
                }
            },
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, style, ..) => {
                let path = self.place_node(mark, Some(&value));
                if let (Some(path), Some(needle)) = (path, self.needle) {
                    if value.contains(needle) {
                        self.sites.push(ScalarSite {
                            path,
                            start: mark.index(),
                            style,
                            value,
                        });
                    }
                }
            }
            Event::Alias(_) => {
                self.place_node(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.place_node(mark, None).unwrap_or_default();
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.place_node(mark, None).unwrap_or_default();
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 0.0.0.0:8000
upstreams:
  service_a:
    backends:
      - 127.0.0.1:8001
      - { address: 127.0.0.1:8003, weight: 2 }
routes:
  - prefix: /a
    upstream: service_a
  - prefix: /b
    upstream: missing
";

    #[test]
    fn finds_values_keys_and_sequence_items() {
        let loc = Locations::index(DOC);
        assert_eq!(loc.of("listen"), Position { line: 1, column: 9 });
        assert_eq!(
            loc.of("routes[1].upstream"),
            Position {
                line: 11,
                column: 15
            }
        );
        assert_eq!(loc.of("upstreams.service_a.backends[0]").line, 5);
        assert_eq!(loc.of("upstreams.service_a.backends[1].weight").line, 6);
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let loc = Locations::index(DOC);
        assert_eq!(loc.of("routes[1].strip_prefix").line, 10);
        assert_eq!(loc.of("nothing.here"), Position { line: 1, column: 1 });
    }

    #[test]
    fn a_one_item_list_is_found_by_the_unindexed_name() {
        let loc = Locations::index("listen:\n  - address: x\n    hsts: {}\n");
        assert_eq!(
            loc.of("listen.hsts"),
            Position {
                line: 3,
                column: 11
            }
        );
        assert_eq!(as_one_item_list("a.b[2].c").as_deref(), Some("a[0].b[2].c"));
        assert_eq!(as_one_item_list("a[1].b"), None);
    }

    #[test]
    fn a_broken_document_gives_an_empty_index() {
        let loc = Locations::index("a: [1, 2");
        assert_eq!(loc.of("a"), Position { line: 1, column: 1 });
    }
}
