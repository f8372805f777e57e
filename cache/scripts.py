"""Lua scripts: each cache operation is one atomic Redis round trip.

Atomicity is what makes the guarantees hold: an invalidation (drop entries + record the scope's invalidation
sequence + append the feed entry + mark the event applied) and a fill (check nothing covering the key was
invalidated since the load began + write entry and indexes) cannot interleave, so a value loaded before an
invalidation began can never be written after it finished.

Layout (see cache/names.py): the entries of one tenant+app live together in one hash, so
``clear(tenant, app)`` is a handful of UNLINKs whatever the number of entries (Redis frees big values in a
background thread), and no per-entry key has to be touched: per-key work costs microseconds each and grows
with the keyspace (memory misses), which is what a 10 k clear among 1 M entries must avoid.
``clear_by_name`` walks its tenant+app+service indexes (O(entries removed)). A field holds
``expiry_ms|inf <TAB> service <TAB> json``; expired fields are invisible, pruned on writes to their
tenant+app, and a whole scope expires with its last entry (PEXPIREAT).

Names are built inside the scripts from the prefix passed in ARGV[1]; that suits a single Redis server or a
replicated one (not Redis Cluster, which would need every name in KEYS).
"""

from __future__ import annotations

# Helpers shared by the scripts (prepended to each one).
_LIB = r"""
local P = ARGV[1]
local function current_epoch() return tonumber(redis.call('GET', P .. ':epoch') or '0') end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ix_base(e) return P .. ':ix:' .. e end
local function ta_of(key) return string.match(key, '^([^#]+#[^#]+)#') end
-- a stored field: expiry ('inf' or ms), service ('' for none), JSON value
local function parse(raw)
  local i = string.find(raw, '\t', 1, true)
  local j = string.find(raw, '\t', i + 1, true)
  return string.sub(raw, 1, i - 1), string.sub(raw, i + 1, j - 1), string.sub(raw, j + 1)
end
local function live(exp, now) return exp == 'inf' or tonumber(exp) > now end
-- the names of one tenant+app scope (and of one of its services)
local function scope(e, ta)
  local b = ix_base(e)
  return b .. ':h:' .. ta, b .. ':x:' .. ta, b .. ':s:' .. ta
end
local function tas_name(e, ta, s) return ix_base(e) .. ':tas:' .. ta .. '#' .. s end
local function ts_name(e, tenant, s) return ix_base(e) .. ':ts:' .. tenant .. '#' .. s end
-- call cmd(name, ...) with the items of list as trailing arguments, in chunks (Lua's unpack is limited)
local CHUNK = 1000
local function chunked(cmd, name, list)
  local n = 0
  for i = 1, #list, CHUNK do
    n = n + redis.call(cmd, name, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
  return n
end
-- expire a scope structure with its last-expiring member
local function expire_like(name, zset)
  local top = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if top[2] == nil then return end
  if top[2] == 'inf' then redis.call('PERSIST', name) else redis.call('PEXPIREAT', name, top[2]) end
end
-- forget keys of one tenant+app whose services are known: their fields, expiry and service-index members
local function forget(e, ta, keys, svcs)
  local h, x = scope(e, ta)
  local by_s = {}
  for i = 1, #keys do
    local s = svcs[i]
    if s ~= '' then
      local t = by_s[s]
      if not t then t = {}; by_s[s] = t end
      t[#t + 1] = keys[i]
    end
  end
  local n = chunked('HDEL', h, keys)
  chunked('ZREM', x, keys)
  for s, members in pairs(by_s) do chunked('ZREM', tas_name(e, ta, s), members) end
  redis.call('DECRBY', ix_base(e) .. ':n', n)
  return n
end
-- drop (a bounded batch of) the scope's expired fields, so dead entries do not pile up in its indexes
local function prune(e, ta, now)
  local h, x = scope(e, ta)
  local dead = redis.call('ZRANGEBYSCORE', x, '-inf', '(' .. now, 'LIMIT', 0, 100)
  if #dead == 0 then return end
  local svcs = {}
  local raws = redis.call('HMGET', h, unpack(dead))
  for i = 1, #dead do
    if raws[i] then local _, s = parse(raws[i]); svcs[i] = s else svcs[i] = '' end
  end
  forget(e, ta, dead, svcs)
end
local function write_entry(e, key, tenant, ta, value, service, ttl_ms, now)
  local h, x, sset = scope(e, ta)
  local names = ix_base(e) .. ':names'
  prune(e, ta, now)
  local old = redis.call('HGET', h, key)
  local score = 'inf'
  if ttl_ms > 0 then score = string.format('%d', now + ttl_ms) end
  if redis.call('HSET', h, key, score .. '\t' .. service .. '\t' .. value) == 1 then
    redis.call('INCR', ix_base(e) .. ':n')
  end
  redis.call('ZADD', x, score, key)
  expire_like(h, x)
  expire_like(x, x)
  if old then
    local _, old_s = parse(old)
    if old_s ~= '' and old_s ~= service then redis.call('ZREM', tas_name(e, ta, old_s), key) end
  end
  if service ~= '' then
    local tas = tas_name(e, ta, service)
    local ts = ts_name(e, tenant, service)
    redis.call('ZADD', tas, score, key)
    expire_like(tas, tas)
    redis.call('SADD', sset, service)
    redis.call('SADD', ts, ta)
    redis.call('SADD', names, tas, ts, sset)
  end
  redis.call('SADD', names, h, x)
  redis.call('SADD', ix_base(e) .. ':tas', ta)
end
"""

# get: ARGV 1 prefix, 2 key -> {1, value, service or ''} or {0, epoch, seq, now_ms} (get_or_load's fill token)
GET = _LIB + r"""
local e = current_epoch()
local now = now_ms()
local h = scope(e, ta_of(ARGV[2]))
local raw = redis.call('HGET', h, ARGV[2])
if raw then
  local exp, s, v = parse(raw)
  if live(exp, now) then return {1, v, s} end
end
return {0, e, tonumber(redis.call('GET', P .. ':seq') or '0'), now}
"""

# put: ARGV 1 prefix, 2 key, 3 tenant, 4 tenant#app, 5 value, 6 service, 7 ttl_ms -> 1
PUT = _LIB + r"""
write_entry(current_epoch(), ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), now_ms())
return 1
"""

# fill: ARGV 1 prefix, 2 key, 3 tenant, 4 tenant#app, 5 value, 6 service, 7 ttl_ms, 8 epoch0, 9 seq0, 10 t0,
#       11 window_ms -> 1 written, 0 refused (an invalidation covering the key ran since the load began, or
#       the load took longer than the window), 2 kept the entry someone else wrote meanwhile
FILL = _LIB + r"""
local e = current_epoch()
if e ~= tonumber(ARGV[8]) then return 0 end
local now = now_ms()
if now - tonumber(ARGV[10]) > tonumber(ARGV[11]) then return 0 end
local seq0 = tonumber(ARGV[9])
local function newer(name)
  local v = redis.call('GET', name)
  return v and tonumber(v) > seq0
end
if newer(P .. ':inv:k:' .. ARGV[2]) or newer(P .. ':inv:ta:' .. ARGV[4]) then return 0 end
if ARGV[6] ~= '' and newer(P .. ':inv:ts:' .. ARGV[3] .. '#' .. ARGV[6]) then return 0 end
local raw = redis.call('HGET', scope(e, ARGV[4]), ARGV[2])
if raw and live(parse(raw), now) then return 2 end
write_entry(e, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), now)
return 1
"""

# apply: one invalidation (or a route-refresh announcement), deduplicated by event id, with its feed entry.
# ARGV 1 prefix, 2 op, 3 event_id ('' = no dedup), 4 dedup_ttl_ms, 5 feed_maxlen, 6 marker_ttl_ms,
#      7 scope a, 8 scope b, 9.. extra feed field/value pairs
# -> {removed, feed_id} or {-1, false} when the event was applied before
APPLY = _LIB + r"""
local op, event_id = ARGV[2], ARGV[3]
-- the done marker is checked first but written last: a script error midway (e.g. WRONGTYPE) does not
-- roll back earlier writes, and must not leave the event marked applied, or its retry/replay would be
-- dropped as a duplicate
if event_id ~= '' and redis.call('EXISTS', P .. ':done:' .. event_id) == 1 then return {-1, false} end
local now = now_ms()
local e = current_epoch()
local base = ix_base(e)
local mttl = tonumber(ARGV[6])
local a, b = ARGV[7], ARGV[8]
local removed = 0
local fields = {'op', op}
local function mark(name)
  redis.call('SET', P .. ':inv:' .. name, redis.call('INCR', P .. ':seq'), 'PX', mttl)
end
if op == 'delete' then
  local ta = ta_of(a)
  local h = scope(e, ta)
  local raw = redis.call('HGET', h, a)
  if raw then
    local exp, s = parse(raw)
    if live(exp, now) then removed = 1 end
    forget(e, ta, {a}, {s})
  end
  mark('k:' .. a)
  local t, app = string.match(a, '^([^#]+)#([^#]+)#')
  for _, x in ipairs({'key', a, 'tenant_id', t, 'app_id', app}) do table.insert(fields, x) end
elseif op == 'clear' then
  -- O(services of the scope) commands, whatever its size: the scope's hash and indexes go whole
  local ta = a .. '#' .. b
  local h, x, sset = scope(e, ta)
  removed = redis.call('ZCOUNT', x, now, '+inf')
  redis.call('DECRBY', base .. ':n', redis.call('HLEN', h))
  for _, s in ipairs(redis.call('SMEMBERS', sset)) do
    redis.call('UNLINK', tas_name(e, ta, s))
    redis.call('SREM', ts_name(e, a, s), ta)
  end
  redis.call('UNLINK', h, x, sset)
  redis.call('SREM', base .. ':tas', ta)
  mark('ta:' .. ta)
  for _, x in ipairs({'tenant_id', a, 'app_id', b}) do table.insert(fields, x) end
elseif op == 'clear_service' then
  -- O(entries removed): each tenant+app holding the service gives up exactly those keys
  local ts = ts_name(e, a, b)
  for _, ta in ipairs(redis.call('SMEMBERS', ts)) do
    local tas = tas_name(e, ta, b)
    removed = removed + redis.call('ZCOUNT', tas, now, '+inf')
    local keys = redis.call('ZRANGE', tas, 0, -1)
    local h, x, sset = scope(e, ta)
    redis.call('DECRBY', base .. ':n', chunked('HDEL', h, keys))
    chunked('ZREM', x, keys)
    redis.call('UNLINK', tas)
    redis.call('SREM', sset, b)
  end
  redis.call('UNLINK', ts)
  mark('ts:' .. a .. '#' .. b)
  for _, x in ipairs({'tenant_id', a, 'service_name', b}) do table.insert(fields, x) end
elseif op == 'invalidate_all' then
  -- entries stored in the epoch (expired ones not yet pruned included): one GET, no walk
  removed = math.max(tonumber(redis.call('GET', base .. ':n') or '0'), 0)
  redis.call('INCR', P .. ':epoch')
  redis.call('INCR', P .. ':seq')
  redis.call('SADD', P .. ':reclaim', e)
elseif op ~= 'routes_refresh' then
  return redis.error_reply('unknown op ' .. op)
end
for i = 9, #ARGV do table.insert(fields, ARGV[i]) end
for _, x in ipairs({'event_id', event_id, 'applied_at', now, 'removed', removed}) do
  table.insert(fields, x)
end
local id = redis.call('XADD', P .. ':feed', 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
if event_id ~= '' then redis.call('SET', P .. ':done:' .. event_id, '1', 'PX', tonumber(ARGV[4])) end
return {removed, id}
"""

# reclaim: free one batch of an old epoch's structures (each UNLINK frees a whole scope, big ones in Redis'
# background thread). ARGV 1 prefix, 2 batch -> {entries freed, epochs left}
RECLAIM = _LIB + r"""
local old = redis.call('SRANDMEMBER', P .. ':reclaim')
if not old then return {0, 0} end
local base = ix_base(old)
local names = redis.call('SPOP', base .. ':names', tonumber(ARGV[2]))
local freed = 0
for _, name in ipairs(names) do
  if string.find(name, base .. ':h:', 1, true) == 1 then freed = freed + redis.call('HLEN', name) end
end
for i = 1, #names, CHUNK do redis.call('UNLINK', unpack(names, i, math.min(i + CHUNK - 1, #names))) end
if redis.call('SCARD', base .. ':names') == 0 then
  redis.call('UNLINK', base .. ':names', base .. ':n', base .. ':tas')
  redis.call('SREM', P .. ':reclaim', old)
end
return {freed, redis.call('SCARD', P .. ':reclaim')}
"""

# count: ARGV 1 prefix -> live entries in the current epoch (O(tenant+app scopes): for status and tests)
COUNT = _LIB + r"""
local e = current_epoch()
local now = now_ms()
local n = 0
for _, ta in ipairs(redis.call('SMEMBERS', ix_base(e) .. ':tas')) do
  local _, x = scope(e, ta)
  n = n + redis.call('ZCOUNT', x, now, '+inf')
end
return n
"""
