//! A node's copy of the last key set it loaded from a PostgreSQL store, so that a restart
//! while the database is down still honours every key. Digests only, never secrets.

use super::db::Keys;
use crate::identity::{self, KeyRecord};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub fn write(path: &Path, keys: &Keys) -> std::io::Result<()> {
    let by_digest: BTreeMap<String, &KeyRecord> = keys
        .iter()
        .map(|(digest, record)| (identity::hex(digest), record.as_ref()))
        .collect();
    write_json(path, &by_digest)
}

/// Writes `value` aside and renames it into place, so a crash never leaves half a file.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, json)?;
    std::fs::rename(&partial, path)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

pub fn read(path: &Path) -> std::io::Result<Keys> {
    let by_digest: BTreeMap<String, KeyRecord> = read_json(path)?;
    Ok(by_digest
        .into_iter()
        .filter_map(|(digest, mut record)| {
            let digest = identity::parse_digest(&digest)?;
            record.digest = digest;
            Some((digest, Arc::new(record)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_round_trips_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let (_, record) = identity::registry::new_key("app", "acme", Some("pro"));
        let keys: Keys = [(record.digest, Arc::new(record.clone()))].into();
        write(&path, &keys).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.get(&record.digest).map(|r| r.as_ref()), Some(&record));
    }
}
