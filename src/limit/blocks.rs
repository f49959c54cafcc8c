//! Penalties (`block_for`): a key a policy refused stays refused for a while, on every node
//! for global policies.
//!
//! Each node keeps the blocks it knows in a bounded table per limiter and checks it before
//! deciding, with no Redis round trip. A node that blocks a global key queues a notice; the
//! sync task publishes queued notices with its scheduled round and reads the other nodes'
//! in the same round trip, from a sorted set `{prefix}:blocks` scored by when each was
//! published. Reading re-reads the last few seconds, so clocks a little apart between nodes
//! lose nothing (applying a notice twice changes nothing).

use super::key;
use super::link::{unix_ms, RedisLink};
use super::policy::Policy;
use crate::redis_store::{fleet, Connection};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How far back each read goes before the newest notice seen: covers clock differences
/// between nodes.
const REREAD_MS: u64 = 5_000;

/// Blocks queued for publication at most, while Redis cannot take them.
const OUTBOX_MAX: usize = 10_000;

/// Notices older than the longest block (24 h) are dropped.
const KEEP_MS: u64 = 86_400_000 + 60_000;

pub fn blocks_key(prefix: &str) -> String {
    fleet::key(prefix, "blocks")
}

impl Policy {
    /// Blocks the key of a request this policy just refused, unless it already is.
    #[cold]
    pub(super) fn penalize(
        &self,
        limiter: &super::policy::Limiter,
        hash: u64,
        key_text: impl FnOnce() -> String,
    ) {
        let (Some(blocks), Some(block_ms)) = (&limiter.blocks, self.block_for_ms) else {
            return;
        };
        let until = unix_ms() + block_ms;
        let new = blocks
            .with(
                hash,
                || 0,
                |u| {
                    let fresh = *u <= unix_ms();
                    if fresh {
                        *u = until;
                    }
                    fresh
                },
            )
            .unwrap_or(false);
        if new && self.scope == crate::config::Scope::Global {
            let mut outbox = self.block_outbox.lock();
            // Bounded while Redis is away; the blocks still hold on this node.
            if outbox.len() < OUTBOX_MAX {
                outbox.push((key_text(), until));
            }
        }
    }

    /// Until when `hash` is blocked, if it is now.
    #[inline]
    pub(super) fn blocked_until(
        &self,
        limiter: &super::policy::Limiter,
        hash: u64,
        now: u64,
    ) -> Option<u64> {
        limiter
            .blocks
            .as_ref()?
            .get(hash, |u| *u)
            .filter(|until| *until > now)
    }

    /// Applies a block another node published.
    fn block_locally(&self, key_text: &str, until: u64) {
        for limiter in self.limiters() {
            let (Some(blocks), Ok(hash)) = (
                &limiter.blocks,
                key::hash_from_text(limiter.id, &self.key, key_text),
            ) else {
                continue;
            };
            blocks.with(hash, || until, |u| *u = (*u).max(until));
        }
    }
}

/// Publishes this node's new blocks and applies the fleet's, in one round trip. `seen` is
/// the newest notice score read so far. Does nothing when no policy blocks fleet-wide.
pub async fn exchange(
    link: &RedisLink,
    connection: &mut Connection,
    policies: &BTreeMap<String, Arc<Policy>>,
    seen: &std::sync::atomic::AtomicU64,
) -> redis::RedisResult<()> {
    use std::sync::atomic::Ordering;
    let blocking: Vec<&Arc<Policy>> = policies
        .values()
        .filter(|p| p.block_for_ms.is_some() && p.scope == crate::config::Scope::Global)
        .collect();
    if blocking.is_empty() {
        return Ok(());
    }
    let key = blocks_key(&link.config.key_prefix);
    let now = unix_ms();
    let mut pipe = redis::pipe();
    for policy in &blocking {
        for (key_text, until) in std::mem::take(&mut *policy.block_outbox.lock()) {
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(now)
                .arg(format!("{}\u{0}{key_text}\u{0}{until}", policy.name))
                .ignore();
        }
    }
    let from = seen.load(Ordering::Relaxed).saturating_sub(REREAD_MS);
    pipe.cmd("ZRANGEBYSCORE")
        .arg(&key)
        .arg(from)
        .arg("+inf")
        .arg("WITHSCORES");
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now.saturating_sub(KEEP_MS))
        .ignore();
    pipe.cmd("PEXPIRE").arg(&key).arg(KEEP_MS).ignore();
    let (notices,): (Vec<(String, u64)>,) = pipe.query_async(connection).await?;
    for (member, score) in notices {
        seen.fetch_max(score, Ordering::Relaxed);
        let mut parts = member.splitn(3, '\u{0}');
        let (Some(name), Some(key_text), Some(until)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(until) = until.parse::<u64>() else {
            continue;
        };
        if until > now {
            if let Some(policy) = policies.get(name) {
                policy.block_locally(key_text, until);
            }
        }
    }
    Ok(())
}
