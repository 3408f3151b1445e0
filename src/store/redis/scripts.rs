//! The Lua scripts the store runs: each a single atomic step on the
//! server, so every instance sees one order of events (a session read
//! with its touch, a revocation with its announcement, a rate-limit check
//! with its charge, a refund).

/// A session and its TTL in one command.
pub(super) static SESSION_GET: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| {
        redis::Script::new("return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}")
    });

/// Records a jti or subject revocation and announces it, atomically, in
/// one command that names one key: a cluster reshard redirects single-key
/// commands cleanly (ASK, MOVED), while a MULTI block, or a script naming
/// two keys of a slot in mid-migration, gets TRYAGAIN until the migration
/// ends. KEYS: the jti set or the subject hash. ARGV: kind, member or field,
/// score or value, now, channel, message.
pub(super) static REVOKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if ARGV[1] == 'jti' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"#,
    )
});

/// GCRA over every cell of a request, all or nothing, on Redis's clock.
/// KEYS: one per cell; ARGV: per cell emission_us, window_us, consume.
/// Reply: allowed (0/1), retry_after_us, then per cell TAT - now (µs).
/// Keys expire on their own when their budget is full again.
pub(super) static RATE_CHECK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local allowed = 1
local retry = 0
local base = {}
local new = {}
for i = 1, n do
  local e = tonumber(ARGV[3 * i - 2])
  local w = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  base[i] = tat
  new[i] = tat + e
  if new[i] - now > w then
    allowed = 0
    if new[i] - now - w > retry then retry = new[i] - now - w end
  end
end
local out = {allowed, retry}
for i = 1, n do
  if allowed == 1 and ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[i], string.format('%.0f', new[i]), 'PX', math.ceil((new[i] - now) / 1000) + 1)
    out[#out + 1] = new[i] - now
  else
    out[#out + 1] = base[i] - now
  end
end
return out
"#,
    )
});

/// Gives back one unit per cell (a `failures` attempt that did not fail).
pub(super) static RATE_REFUND: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| {
        redis::Script::new(
            r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new = tat - tonumber(ARGV[i])
  if new <= now then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
  end
end
return 1
"#,
        )
    });
