//! The Lua scripts that keep limit state in Redis. Each runs atomically on the server, so
//! nodes never race each other on a key. They follow the definitions in `algorithm.rs`.

use std::sync::LazyLock;

/// Window counters (fixed and sliding), kept as a hash of `u` (units the fleet admitted and
/// reported) and one field per node, `r:<node>` = `amount:expires_ms`: quota that node
/// reserved and has not reported spent. Reports what a node admitted, then reserves quota
/// for it (async leases, `exact` = 0: as much of `want` as fits) or admits one request
/// (atomic mode, `exact` = 1: all of `want` or nothing, counted as used at once).
///
/// The limit applies to `u` plus the live reservations. A node states the reservation it
/// still holds (`held`) each time, and renews it well before it expires; a node that
/// crashed stops renewing, so what it held returns to the fleet after `ttl_ms` instead of
/// being stranded for the rest of the window. Expiry runs on the Redis clock. A sliding
/// window weighs the previous window's `u` only, so reservations never spent do not shrink
/// the next window.
///
/// KEYS[1] this window's hash, KEYS[2] the previous window's hash
/// ARGV: delta (add to u), held (this node's unspent reservation), want, limit,
/// elapsed_ms (into the window), window_ms, sliding (0/1), exact (0/1), node field,
/// ttl_ms
/// Returns {u + reservations after, granted, previous window's u, u after}.
pub const WINDOW: &str = r#"
local delta = tonumber(ARGV[1])
local held = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local elapsed = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local exact = ARGV[8] == '1'
local me = ARGV[9]
local ttl = tonumber(ARGV[10])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local used = delta
local others = 0
local expired = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'u' then
    used = used + tonumber(fields[i + 1])
  elseif name ~= me then
    local amount, expires = string.match(fields[i + 1], '^(%d+):(%d+)$')
    if amount and tonumber(expires) > now then
      others = others + tonumber(amount)
    else
      expired[#expired + 1] = name
    end
  end
end
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
end
local mine = held
if exact then
  mine = 0
end
local prev = 0
local effective = limit
if ARGV[7] == '1' then
  prev = tonumber(redis.call('HGET', KEYS[2], 'u') or '0')
  effective = limit - math.ceil(prev * (window - elapsed) / window)
end
local room = effective - used - others - mine
local grant = 0
if exact then
  if room >= want then
    grant = want
    used = used + grant
  end
elseif room > 0 then
  grant = math.min(want, room)
  mine = mine + grant
end
if delta > 0 or grant > 0 or not exact then
  redis.call('HSET', KEYS[1], 'u', used)
  if not exact then
    if mine > 0 then
      redis.call('HSET', KEYS[1], me, string.format('%d:%d', mine, now + ttl))
    else
      redis.call('HDEL', KEYS[1], me)
    end
  end
  redis.call('PEXPIRE', KEYS[1], 2 * window + 1000)
end
return {used + others + mine, grant, prev, used}
"#;

/// A token bucket kept as its theoretical arrival time in microseconds (GCRA), timed by the
/// Redis server's clock so nodes with skewed clocks still agree.
///
/// KEYS[1] the bucket
/// ARGV: debt, want, interval_us (may be fractional), burst, exact (0/1)
/// Returns {granted, tokens left, ms until the next token}.
pub const BUCKET: &str = r#"
local debt = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local t = tonumber(ARGV[3])
local tau = t * tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + debt * t
local room = math.floor((now + tau - tat) / t)
local grant = 0
if ARGV[5] == '1' then
  if room >= want then grant = want end
elseif room > 0 then
  grant = math.min(want, room)
end
tat = tat + grant * t
local held = tat - now
redis.call('SET', KEYS[1], string.format('%.0f', math.ceil(tat)), 'PX', math.ceil(held / 1000) + 1000)
local left = math.max(0, math.floor((tau - held) / t))
local next_token = 0
if left < 1 then next_token = math.ceil((held - tau + t) / 1000) end
return {grant, left, next_token}
"#;

/// The exact sliding log: one sorted-set member per admitted unit, scored by time.
///
/// KEYS[1] the log
/// ARGV: now_ms, window_ms, limit, cost, member prefix (unique per node and request)
/// Returns {allowed (0/1), remaining, ms until it would fit (when refused) or until the
/// newest entry leaves (when allowed)}.
pub const LOG: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n + cost <= limit then
  for i = 1, cost do
    redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - n - cost, window}
end
local wait = window
if cost <= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], n + cost - limit - 1, n + cost - limit - 1, 'WITHSCORES')
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
end
return {0, math.max(0, limit - n), wait}
"#;

pub static WINDOW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WINDOW));
pub static BUCKET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BUCKET));
pub static LOG_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LOG));

/// Every script, for loading them after a NOSCRIPT answer.
pub fn all() -> [(&'static str, &'static redis::Script); 3] {
    [
        (WINDOW, &WINDOW_SCRIPT),
        (BUCKET, &BUCKET_SCRIPT),
        (LOG, &LOG_SCRIPT),
    ]
}
