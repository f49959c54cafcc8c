//! Every key tollgate's config types accept, read off their serde implementations: a
//! deserializer that answers `deserialize_struct` by noting the struct's field names (the
//! list serde's derive passes, so it cannot drift from the types) and then descends into
//! each field.
//!
//! Paths are dotted: `redis.sync_interval`; a list's element is `[]` (`routes[].prefix`); a
//! map with names the user chooses is `<name>` (`limits.<name>.rate`). A field whose type
//! reads a scalar (a duration, a rate, an enum) is a leaf.
//!
//! A field deserialized through `deserialize_any` (one that takes a string or a map, such as
//! `listen`) shows up as a leaf: serde gives no field list there. The caller walks such types
//! itself with [`walk_into`].

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

/// What one walk learned, shared by every deserializer it creates.
#[derive(Default)]
struct Notes {
    /// Every path seen, leaves and containers.
    paths: BTreeSet<String>,
    /// Paths whose value failed to deserialize from the walker's stand-in values: later
    /// walks leave them out, so the fields after them get their turn.
    skip: BTreeSet<String>,
    /// The deepest path entered last: when a walk fails, the one to skip next time.
    last: String,
}

struct Walker<'a> {
    path: String,
    notes: &'a RefCell<Notes>,
}

impl<'a> Walker<'a> {
    fn at(&self, path: String) -> Walker<'a> {
        Walker {
            path,
            notes: self.notes,
        }
    }

    fn enter(&self) {
        self.notes.borrow_mut().last = self.path.clone();
    }
}

/// The fields of one struct, yielded one at a time with the walker as each value.
struct Fields<'a> {
    walker: Walker<'a>,
    fields: Vec<&'static str>,
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        while let Some(field) = self.fields.get(self.next) {
            let path = join(&self.walker.path, field);
            if self.walker.notes.borrow().skip.contains(&path) {
                self.next += 1;
                continue;
            }
            let key: de::value::StrDeserializer<'_, Stop> = field.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let field = self.fields[self.next];
        self.next += 1;
        seed.deserialize(self.walker.at(join(&self.walker.path, field)))
    }
}

/// A map with one entry named `<name>`.
struct OneEntry<'a> {
    walker: Walker<'a>,
    done: bool,
}

impl<'de> de::MapAccess<'de> for OneEntry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        if self.done || self.walker.notes.borrow().skip.contains(&self.walker.path) {
            return Ok(None);
        }
        let key: de::value::StrDeserializer<'_, Stop> = "name".into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        self.done = true;
        seed.deserialize(self.walker.at(self.walker.path.clone()))
    }
}

/// A list of one element.
struct OneElement<'a> {
    walker: Walker<'a>,
    done: bool,
}

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        if self.done || self.walker.notes.borrow().skip.contains(&self.walker.path) {
            return Ok(None);
        }
        self.done = true;
        seed.deserialize(self.walker.at(self.walker.path.clone()))
            .map(Some)
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Scalars get a stand-in value; a type that parses it and refuses it is a leaf anyway.
macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            self.enter();
            self.notes.borrow_mut().paths.insert(self.path.clone());
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Stop;

    leaf! {
        deserialize_any => visit_str("x"),
        deserialize_bool => visit_bool(true),
        deserialize_i8 => visit_i8(1),
        deserialize_i16 => visit_i16(1),
        deserialize_i32 => visit_i32(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u8(1),
        deserialize_u16 => visit_u16(1),
        deserialize_u32 => visit_u32(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f32(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"),
        deserialize_string => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("x"),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.enter();
        let path = format!("{}[]", self.path);
        self.notes.borrow_mut().paths.insert(path.clone());
        visitor.visit_seq(OneElement {
            walker: self.at(path),
            done: false,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.enter();
        let path = join(&self.path, "<name>");
        self.notes.borrow_mut().paths.insert(path.clone());
        visitor.visit_map(OneEntry {
            walker: self.at(path),
            done: false,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.enter();
        {
            let mut notes = self.notes.borrow_mut();
            if !self.path.is_empty() {
                notes.paths.insert(self.path.clone());
            }
            for field in fields {
                notes.paths.insert(join(&self.path, field));
            }
        }
        visitor.visit_map(Fields {
            walker: self,
            fields: fields.to_vec(),
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.enter();
        self.notes.borrow_mut().paths.insert(self.path.clone());
        let first: de::value::StrDeserializer<'_, Stop> = variants[0].into_deserializer();
        visitor.visit_enum(first)
    }
}

/// Every key path of `T`, each prefixed with `prefix` (empty for the top level).
pub fn walk_into<T: DeserializeOwned>(prefix: &str) -> BTreeSet<String> {
    let notes = RefCell::new(Notes::default());
    // Each failed walk skips the path it failed at; a walk that ends (even with a missing
    // required field, which serde reports after the last field) has seen everything.
    for _ in 0..10_000 {
        notes.borrow_mut().last.clear();
        let walker = Walker {
            path: prefix.to_string(),
            notes: &notes,
        };
        match T::deserialize(walker) {
            Ok(_) => break,
            Err(_) => {
                let mut n = notes.borrow_mut();
                let last = std::mem::take(&mut n.last);
                if last.is_empty() || !n.skip.insert(last) {
                    break;
                }
            }
        }
    }
    let paths = notes.into_inner().paths;
    paths.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The paths that name something inside them too: sections, lists and maps.
pub fn containers(paths: &BTreeSet<String>) -> BTreeSet<String> {
    paths
        .iter()
        .filter(|p| {
            paths.iter().any(|q| {
                q.len() > p.len()
                    && q.starts_with(p.as_str())
                    && matches!(q.as_bytes()[p.len()], b'.' | b'[')
            })
        })
        .cloned()
        .collect()
}
