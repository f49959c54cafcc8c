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
/// window weighs the previous window's `u` plus the reservations still live in it: a node
/// may still spend those (its clock a little behind, or its last report not yet in), so
/// leaving them out would let this window grant the same quota twice. A window's unspent
/// reservations are handed back when it ends, so they shrink the next window only until
/// then.
///
/// KEYS[1] this window's hash, KEYS[2] the previous window's hash
/// ARGV: delta (add to u; negative hands units back), held (this node's unspent reservation), want, limit,
/// elapsed_ms (into the window), window_ms (this window's length: calendar months
/// differ), sliding (0/1), exact (0/1), node field, ttl_ms (of the reservation), keep_ms
/// (how long the hash outlives this write: through the next window, which a sliding window
/// weighs it in; `2 × window + 1 s` when left out)
/// Returns {u + reservations after, granted, previous window's u + live reservations, u
/// after}.
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
local keep = tonumber(ARGV[11]) or (2 * window + 1000)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- u and the live reservations of one window's hash (all of them when skip is nil),
-- dropping expired ones.
local function count(key, skip)
  local fields = redis.call('HGETALL', key)
  local used, reserved, expired = 0, 0, {}
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'u' then
      used = tonumber(fields[i + 1])
    elseif name ~= skip then
      local amount, expires = string.match(fields[i + 1], '^(%d+):(%d+)$')
      if amount and tonumber(expires) > now then
        reserved = reserved + tonumber(amount)
      else
        expired[#expired + 1] = name
      end
    end
  end
  if #expired > 0 then
    redis.call('HDEL', key, unpack(expired))
  end
  return used, reserved
end
local stored, others = count(KEYS[1], me)
-- A negative delta hands back units admitted earlier (another policy refused the request).
local used = math.max(0, stored + delta)
local mine = held
if exact then
  mine = 0
end
local prev = 0
local effective = limit
if ARGV[7] == '1' then
  local prev_used, prev_reserved = count(KEYS[2], nil)
  prev = prev_used + prev_reserved
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
if delta ~= 0 or grant > 0 or not exact then
  redis.call('HSET', KEYS[1], 'u', used)
  if not exact then
    if mine > 0 then
      redis.call('HSET', KEYS[1], me, string.format('%d:%d', mine, now + ttl))
    else
      redis.call('HDEL', KEYS[1], me)
    end
  end
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {used + others + mine, grant, prev, used}
"#;

/// A token bucket kept as its theoretical arrival time in microseconds (GCRA, field `t`),
/// timed by the Redis server's clock so nodes with skewed clocks still agree, plus one
/// field per node, `r:<node>` = `amount:expires_ms`: tokens that node reserved and has not
/// reported spent.
///
/// Reserved tokens stay inside the bucket until they are spent: the bucket refills up to
/// `burst` counting them, and grants only what is left beside them. So however long a node
/// holds tokens, the fleet never spends more than `burst` at once (tokens taken out of the
/// bucket at grant time would let it refill behind them). A spent token is charged when
/// it is reported (`charge`), which only delays its refill by up to one sync. Units a node
/// admitted with no reservation behind them are charged the same way. Atomic mode
/// (`exact` = 1) takes all of `want` or nothing and charges it at once.
///
/// KEYS[1] the bucket
/// ARGV: charge (negative hands tokens back), held (this node's unspent reservation after this report), want,
/// interval_us (may be fractional), burst, exact (0/1), node field, ttl_ms
/// Returns {granted, tokens left beside every reservation, ms until the next one}.
pub const BUCKET: &str = r#"
local charge = tonumber(ARGV[1])
local held = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = tonumber(ARGV[4])
local tau = t * tonumber(ARGV[5])
local exact = ARGV[6] == '1'
local me = ARGV[7]
local ttl = tonumber(ARGV[8])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local tat = 0
local others = 0
local expired = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 't' then
    tat = tonumber(fields[i + 1])
  elseif name ~= me then
    local amount, expires = string.match(fields[i + 1], '^(%d+):(%d+)$')
    if amount and tonumber(expires) > now_ms then
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
if tat < now then tat = now end
tat = tat + charge * t
-- A negative charge hands tokens back; the bucket still holds no more than its burst.
if tat < now then tat = now end
local room = math.floor((now + tau - tat) / t) - others - mine
local grant = 0
if exact then
  if room >= want then
    grant = want
    tat = tat + grant * t
  end
elseif room > 0 then
  grant = math.min(want, room)
  mine = mine + grant
end
local left = math.max(0, room - grant)
if exact then
  left = math.max(0, math.floor((now + tau - tat) / t) - others)
end
redis.call('HSET', KEYS[1], 't', string.format('%.0f', math.ceil(tat)))
if not exact then
  if mine > 0 then
    redis.call('HSET', KEYS[1], me, string.format('%d:%d', mine, now_ms + ttl))
  else
    redis.call('HDEL', KEYS[1], me)
  end
end
-- The bucket outlives its refill, and every live reservation: losing `t` while tokens are
-- out would refill the bucket behind them.
local keep = math.ceil((tat - now) / 1000) + 1000
if others + mine > 0 then
  keep = math.max(keep, ttl + 1000)
end
redis.call('PEXPIRE', KEYS[1], keep)
local next_token = 0
if left < 1 then
  -- When one more token fits beside the reservations: tat - tau + t * (1 + reserved).
  next_token = math.max(1, math.ceil((tat - tau + t * (1 + others + mine) - now) / 1000))
end
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

/// Concurrency slots leased to nodes (async), kept as a hash with one field per node:
/// `r:<node>` = `slots:expires_ms:spare`, the slots that node holds (in use or spare) and
/// how many of them it did not use at its last word, and `w:<node>` = `slots:expires_ms`,
/// slots it asked for and could not get. A node states
/// what it keeps (`held`, never more than it held before) and asks for `want` more; the
/// script grants only what fits under the limit beside every other node's live
/// reservation, so the fleet never holds more than the limit. A node that stops renewing
/// (it crashed) loses its reservation when it expires, on the Redis clock.
///
/// KEYS[1] the key's hash
/// ARGV: held, want, limit, node id, ttl_ms (of this node's fields), spare (of `held`)
/// Returns {slots the fleet holds after the script, granted, slots other nodes wait for,
/// slots other nodes hold spare}.
pub const SLOTS: &str = r#"
local held = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local me = ARGV[4]
local ttl = tonumber(ARGV[5])
local spare = tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local others, waiting, idle, expired = 0, 0, 0, {}
for i = 1, #fields, 2 do
  local name = fields[i]
  local kind = string.sub(name, 1, 2)
  if string.sub(name, 3) ~= me then
    local amount, expires, unused = string.match(fields[i + 1], '^(%d+):(%d+):?(%d*)$')
    if amount and tonumber(expires) > now then
      if kind == 'r:' then
        others = others + tonumber(amount)
        if unused ~= '' then
          idle = idle + tonumber(unused)
        end
      else
        waiting = waiting + tonumber(amount)
      end
    else
      expired[#expired + 1] = name
    end
  end
end
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
end
local room = limit - others - held
local grant = 0
if room > 0 then
  grant = math.min(want, room)
end
local mine = held + grant
if mine > 0 then
  redis.call('HSET', KEYS[1], 'r:' .. me, string.format('%d:%d:%d', mine, now + ttl, spare + grant))
else
  redis.call('HDEL', KEYS[1], 'r:' .. me)
end
if want > grant then
  redis.call('HSET', KEYS[1], 'w:' .. me, string.format('%d:%d', want - grant, now + ttl))
else
  redis.call('HDEL', KEYS[1], 'w:' .. me)
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl + 1000)
return {others + mine, grant, waiting, idle}
"#;

/// A concurrency slot acquired per request (atomic): a sorted set of the slots in use,
/// one member per slot, scored by when it expires on the Redis clock. Expired members
/// (their node stopped renewing them: it crashed) are dropped first; the request's
/// members are added only if they all fit under the limit.
///
/// KEYS[1] the key's sorted set
/// ARGV: limit, cost, member prefix (unique per node and request), ttl_ms
/// Returns {admitted (0/1), slots in use after}.
pub const SLOT_ACQUIRE: &str = r#"
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n + cost > limit then
  return {0, n}
end
for i = 1, cost do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3] .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl + 1000)
return {1, n + cost}
"#;

/// Renews the slots one node's requests still hold (atomic), claims those it admitted
/// while Redis could not answer, and removes those of such requests that have ended.
/// Members already gone (their request ended, or they expired) stay gone; claimed members
/// are added whether they fit or not: their requests are in flight already, and the
/// fleet's count must cover them until they end.
///
/// KEYS[1] the key's sorted set
/// ARGV: ttl_ms, the number of members to claim, the number to remove, the members to
/// claim, those to remove, then the members to renew
/// Returns {members renewed or claimed}.
pub const SLOT_RENEW: &str = r#"
local ttl = tonumber(ARGV[1])
local claims = tonumber(ARGV[2])
local releases = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local touched = 0
for i = 4, 3 + claims do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  touched = touched + 1
end
for i = 4 + claims, 3 + claims + releases do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
for i = 4 + claims + releases, #ARGV do
  touched = touched + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
end
if touched > 0 then
  redis.call('PEXPIRE', KEYS[1], 2 * ttl + 1000)
end
return {touched}
"#;

pub static WINDOW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WINDOW));
pub static BUCKET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BUCKET));
pub static LOG_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LOG));

pub static SLOTS_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SLOTS));
pub static SLOT_ACQUIRE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLOT_ACQUIRE));
pub static SLOT_RENEW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLOT_RENEW));

/// Every script, for loading them after a NOSCRIPT answer.
pub fn all() -> [(&'static str, &'static redis::Script); 6] {
    [
        (WINDOW, &WINDOW_SCRIPT),
        (BUCKET, &BUCKET_SCRIPT),
        (LOG, &LOG_SCRIPT),
        (SLOTS, &SLOTS_SCRIPT),
        (SLOT_ACQUIRE, &SLOT_ACQUIRE_SCRIPT),
        (SLOT_RENEW, &SLOT_RENEW_SCRIPT),
    ]
}
