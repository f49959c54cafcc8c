//! Redis Cluster hash slots: which slot a key is in, which master owns it (as `CLUSTER
//! SLOTS` last said), and which slots are unreachable right now.

use redis::Value;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const SLOTS: usize = 16_384;

/// The slot of `key`: CRC16 of its hash tag (the part in the first `{...}`, when not
/// empty) or of the whole key, as Redis Cluster and redis-rs compute it.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

/// Slot ranges and the address (`host:port`) of the master serving each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply; `fallback_host` stands in for an empty address
    /// (a node that does not know its own, as a cluster of one reports).
    pub fn parse(reply: &Value, fallback_host: &str) -> Option<SlotMap> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                fallback_host.to_string()
            } else {
                host
            };
            let port = int(master.get(1)?)?;
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            ranges.push((start, end, addr));
        }
        ranges.sort();
        Some(SlotMap { ranges })
    }

    /// The master serving `slot`, if one is known.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(_, end, _)| *end < slot);
        self.ranges
            .get(i)
            .filter(|(start, _, _)| *start <= slot)
            .map(|(_, _, addr)| addr.as_str())
    }

    /// Every master, once.
    pub fn masters(&self) -> Vec<String> {
        let mut out: Vec<String> = self.ranges.iter().map(|(_, _, a)| a.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The slot ranges `master` serves.
    pub fn ranges_of<'a>(&'a self, master: &'a str) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.ranges
            .iter()
            .filter(move |(_, _, a)| a == master)
            .map(|(s, e, _)| (*s, *e))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Which slots cannot be reached right now: one bit per slot, so the request path asks
/// about its key's slot without a lock.
pub struct SlotHealth {
    down: Box<[AtomicU64]>,
    down_count: AtomicU32,
}

impl Default for SlotHealth {
    fn default() -> Self {
        SlotHealth {
            down: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
            down_count: AtomicU32::new(0),
        }
    }
}

impl SlotHealth {
    /// Whether any slot is down: the request path's fast check.
    #[inline]
    pub fn any_down(&self) -> bool {
        self.down_count.load(Ordering::Relaxed) > 0
    }

    pub fn down_slots(&self) -> u32 {
        self.down_count.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn is_down(&self, slot: u16) -> bool {
        let slot = slot as usize % SLOTS;
        self.down[slot / 64].load(Ordering::Relaxed) & (1 << (slot % 64)) != 0
    }

    /// Marks slots `start..=end` down or up.
    pub fn set(&self, start: u16, end: u16, down: bool) {
        let (start, end) = (start as usize % SLOTS, end as usize % SLOTS);
        for slot in start..=end {
            let bit = 1u64 << (slot % 64);
            let word = &self.down[slot / 64];
            let before = if down {
                word.fetch_or(bit, Ordering::Relaxed)
            } else {
                word.fetch_and(!bit, Ordering::Relaxed)
            };
            match (before & bit != 0, down) {
                (false, true) => {
                    self.down_count.fetch_add(1, Ordering::Relaxed);
                }
                (true, false) => {
                    self.down_count.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    pub fn clear(&self) {
        self.set(0, (SLOTS - 1) as u16, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_ne!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot_of(b"tollgate:rl:{p|k}:w1000:5"), slot_of(b"p|k"));
        assert_eq!(slot_of(b"123456789"), 0x31C3);
    }

    #[test]
    fn owners_come_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("::1", 7002),
            ]),
        ]);
        let map = SlotMap::parse(&reply, "127.0.0.1").unwrap();
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("10.0.0.2:7001"));
        assert_eq!(map.owner(16383), Some("[::1]:7002"));
        assert_eq!(map.masters().len(), 3);
        assert_eq!(
            map.ranges_of("10.0.0.2:7001").collect::<Vec<_>>(),
            vec![(5461, 10922)]
        );
        let partial = SlotMap::parse(
            &Value::Array(vec![Value::Array(vec![
                Value::Int(10),
                Value::Int(20),
                node("h", 1),
            ])]),
            "x",
        )
        .unwrap();
        assert_eq!(partial.owner(9), None);
        assert_eq!(partial.owner(21), None);
        assert!(SlotMap::parse(&Value::Nil, "x").is_none());
    }

    #[test]
    fn health_counts_down_slots() {
        let health = SlotHealth::default();
        assert!(!health.any_down());
        health.set(100, 200, true);
        health.set(150, 160, true);
        assert_eq!(health.down_slots(), 101);
        assert!(health.is_down(100) && health.is_down(200) && !health.is_down(201));
        health.set(0, 16383, false);
        assert!(!health.any_down());
    }
}
