"""The Redis admit script: ``modelseal.quota.policy.admit`` in Lua, atomic in Redis.

KEYS, five per scope: bucket (hash t, ts), day counter, month counter, total counter,
concurrency leases (sorted set, score = lease expiry in ms).
ARGV: now_ms, lease_id, lease_ms, day_ttl_s, month_ttl_s, n_scopes, then per scope the six
``EngineLimits`` integers (rate_units, burst_units, per_day, per_month, total, concurrent;
-1 = unlimited).
Returns {allowed, limit_index (1..5 in LIMIT_ORDER, 0 if allowed), scope (0-based),
retry_ms (-1 = computed by the caller), remaining tokens, per_day, per_month, total,
leased-scope bit mask}.

All numbers stay integers below 2^53, so Lua's doubles give exactly what the Python policy
gives; values written back go through "%.0f" so they are never rounded to 14 digits.
"""

from __future__ import annotations

from typing import Final

ADMIT_LUA: Final = r"""
local now = tonumber(ARGV[1])
local lease_id = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local day_ttl = tonumber(ARGV[4])
local month_ttl = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local UNIT = 1000000
local lim, cur = {}, {}

for i = 1, n do
  local a = 6 + (i - 1) * 6
  local k = (i - 1) * 5
  local L = {rate = tonumber(ARGV[a + 1]), burst = tonumber(ARGV[a + 2]),
             day = tonumber(ARGV[a + 3]), month = tonumber(ARGV[a + 4]),
             total = tonumber(ARGV[a + 5]), conc = tonumber(ARGV[a + 6])}
  local C = {day = 0, month = 0, total = 0, inflight = 0, tokens = 0}
  if L.day >= 0 then C.day = tonumber(redis.call('GET', KEYS[k + 2]) or '0') end
  if L.month >= 0 then C.month = tonumber(redis.call('GET', KEYS[k + 3]) or '0') end
  if L.total >= 0 then C.total = tonumber(redis.call('GET', KEYS[k + 4]) or '0') end
  if L.conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', string.format('%.0f', now))
    C.inflight = redis.call('ZCARD', KEYS[k + 5])
  end
  if L.rate >= 0 then
    local b = redis.call('HMGET', KEYS[k + 1], 't', 'ts')
    local tokens = L.burst
    if b[1] then
      local t = tonumber(b[1])
      local need = L.burst - t
      if need > 0 then
        local elapsed = now - tonumber(b[2])
        if elapsed < 0 then elapsed = 0 end
        local fill = math.floor((need * 1000 + L.rate - 1) / L.rate)
        if elapsed < fill then tokens = t + math.floor(elapsed * L.rate / 1000) end
      end
    end
    C.tokens = tokens
  end
  lim[i] = L
  cur[i] = C
end

local function remaining()
  local r = {-1, -1, -1, -1}
  local function tighter(j, v)
    if r[j] == -1 or v < r[j] then r[j] = v end
  end
  for i = 1, n do
    local L, C = lim[i], cur[i]
    if L.rate >= 0 then tighter(1, math.floor(C.tokens / UNIT)) end
    if L.day >= 0 then tighter(2, math.max(0, L.day - C.day)) end
    if L.month >= 0 then tighter(3, math.max(0, L.month - C.month)) end
    if L.total >= 0 then tighter(4, math.max(0, L.total - C.total)) end
  end
  return r
end

for kind = 1, 5 do
  for i = 1, n do
    local L, C = lim[i], cur[i]
    local deny, retry = false, -1
    if kind == 1 then
      deny = L.total >= 0 and C.total + 1 > L.total
    elseif kind == 2 then
      deny = L.month >= 0 and C.month + 1 > L.month
    elseif kind == 3 then
      deny = L.day >= 0 and C.day + 1 > L.day
    elseif kind == 4 then
      deny = L.conc >= 0 and C.inflight + 1 > L.conc
    elseif L.rate >= 0 and C.tokens < UNIT then
      deny = true
      retry = math.floor(((UNIT - C.tokens) * 1000 + L.rate - 1) / L.rate)
    end
    if deny then
      local r = remaining()
      return {0, kind, i - 1, retry, r[1], r[2], r[3], r[4], 0}
    end
  end
end

local leased = 0
for i = 1, n do
  local k = (i - 1) * 5
  local L, C = lim[i], cur[i]
  if redis.call('INCR', KEYS[k + 2]) == 1 then redis.call('EXPIRE', KEYS[k + 2], day_ttl) end
  if redis.call('INCR', KEYS[k + 3]) == 1 then redis.call('EXPIRE', KEYS[k + 3], month_ttl) end
  redis.call('INCR', KEYS[k + 4])
  C.day = C.day + 1
  C.month = C.month + 1
  C.total = C.total + 1
  if L.rate >= 0 then
    C.tokens = C.tokens - UNIT
    redis.call('HSET', KEYS[k + 1], 't', string.format('%.0f', C.tokens),
               'ts', string.format('%.0f', now))
    local fill = math.floor(((L.burst - C.tokens) * 1000 + L.rate - 1) / L.rate)
    redis.call('PEXPIRE', KEYS[k + 1], fill + 60000)
  end
  if L.conc >= 0 and lease_id ~= '' then
    redis.call('ZADD', KEYS[k + 5], string.format('%.0f', now + lease_ms), lease_id)
    redis.call('PEXPIRE', KEYS[k + 5], lease_ms + 60000)
    leased = leased + 2 ^ (i - 1)
  end
end
local r = remaining()
return {1, 0, -1, 0, r[1], r[2], r[3], r[4], leased}
"""


REFUND_LUA: Final = r"""
-- Undo one admitted request that never reached the model. KEYS as for the admit script,
-- with the day and month ids of the time it was admitted. ARGV: lease_id, n_scopes, then
-- per scope its burst_units (-1 = no rate limit).
local UNIT = 1000000
local lease_id = ARGV[1]
local n = tonumber(ARGV[2])
for i = 1, n do
  local k = (i - 1) * 5
  for j = 2, 4 do
    local v = tonumber(redis.call('GET', KEYS[k + j]) or '0')
    if v > 0 then redis.call('DECR', KEYS[k + j]) end
  end
  local burst = tonumber(ARGV[2 + i])
  if burst >= 0 then
    local t = redis.call('HGET', KEYS[k + 1], 't')
    if t then
      local tokens = math.min(burst, tonumber(t) + UNIT)
      redis.call('HSET', KEYS[k + 1], 't', string.format('%.0f', tokens))
    end
  end
  if lease_id ~= '' then redis.call('ZREM', KEYS[k + 5], lease_id) end
end
return 1
"""
