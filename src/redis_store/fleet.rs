//! Keys the whole fleet shares (the live-node set, resets, blocks):
//! all under one hash tag, so on a cluster they sit in one slot and a pipeline over them
//! stays a single-slot pipeline.

use super::Connection;

/// `{prefix}:{fleet}:{name}`.
pub fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{fleet}}:{name}")
}

/// Registers `node_id` as alive and reads how many nodes are, in one round trip: a sorted
/// set of nodes by last heartbeat (Unix ms), pruned of those silent for `liveness_ms`.
pub async fn heartbeat(
    connection: &mut Connection,
    prefix: &str,
    node_id: &str,
    now_ms: u64,
    liveness_ms: u64,
) -> redis::RedisResult<u64> {
    let key = key(prefix, "nodes");
    let (_, _, count, _): (i64, i64, u64, i64) = redis::pipe()
        .cmd("ZADD")
        .arg(&key)
        .arg(now_ms)
        .arg(node_id)
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now_ms.saturating_sub(liveness_ms))
        .cmd("ZCARD")
        .arg(&key)
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(liveness_ms * 2)
        .query_async(connection)
        .await?;
    Ok(count)
}

/// Takes `node_id` out of the live set, so the others' shares grow at once.
pub async fn leave(
    connection: &mut Connection,
    prefix: &str,
    node_id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("ZREM")
        .arg(key(prefix, "nodes"))
        .arg(node_id)
        .query_async::<i64>(connection)
        .await
        .map(drop)
}
