"""Lua scripts: each cache operation is one atomic Redis round trip.

Atomicity is what makes the guarantees hold: an invalidation (drop entries + record the scope's invalidation
sequence + append the feed entry + mark the event applied) and a fill (check nothing covering the key was
invalidated since the load began + write entry and indexes) cannot interleave, so a value loaded before an
invalidation began can never be written after it finished.

Names are built inside the scripts from the prefix passed in ARGV[1]; that suits a single Redis server or a
replicated one (not Redis Cluster, which would need every name in KEYS).
"""

from __future__ import annotations

# Helpers shared by the scripts (prepended to each one).
_LIB = r"""
local P = ARGV[1]
local INF = '+inf'
local function current_epoch() return tonumber(redis.call('GET', P .. ':epoch') or '0') end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function entry_name(e, key) return P .. ':e:' .. e .. ':' .. key end
local function ix_base(e) return P .. ':ix:' .. e end
-- keep an index: add/refresh the member, drop members whose entries expired,
-- expire the index with its last member
local function ix_touch(ix, member, score, now, names)
  redis.call('ZADD', ix, score, member)
  redis.call('ZREMRANGEBYSCORE', ix, '-inf', '(' .. now)
  local top = redis.call('ZRANGE', ix, -1, -1, 'WITHSCORES')
  if top[2] == nil or top[2] == 'inf' then redis.call('PERSIST', ix)
  else redis.call('PEXPIREAT', ix, top[2]) end
  if names then redis.call('SADD', names, ix) end
end
local function write_entry(e, key, tenant, ta, value, service, ttl_ms, now)
  local en = entry_name(e, key)
  local old_s = redis.call('HGET', en, 's')
  redis.call('HSET', en, 'v', value, 's', service)
  local score = INF
  if ttl_ms > 0 then
    redis.call('PEXPIRE', en, ttl_ms)
    score = now + ttl_ms
  else
    redis.call('PERSIST', en)
  end
  local base = ix_base(e)
  local names = base .. ':names'
  ix_touch(base .. ':all', key, score, now, nil)
  ix_touch(base .. ':ta:' .. ta, key, score, now, names)
  if service ~= '' then ix_touch(base .. ':ts:' .. tenant .. '#' .. service, key, score, now, names) end
  if old_s and old_s ~= '' and old_s ~= service then
    redis.call('ZREM', base .. ':ts:' .. tenant .. '#' .. old_s, key)
  end
end
-- call cmd(name, ...) with the items of list as trailing arguments, in chunks (Lua's unpack is limited); the
-- sum of the replies. Each redis.call costs microseconds: batching keeps a 10 k clear in milliseconds.
local CHUNK = 1000
local function chunked(cmd, name, list)
  local n = 0
  for i = 1, #list, CHUNK do
    local last = math.min(i + CHUNK - 1, #list)
    if name then n = n + redis.call(cmd, name, unpack(list, i, last))
    else n = n + redis.call(cmd, unpack(list, i, last)) end
  end
  return n
end
-- drop entries and every index membership they have; skip_ix is an index already being deleted whole;
-- svcs (optional, aligned with keys) are the entries' services, else read one HGET per key
local function drop_keys(e, keys, skip_ix, svcs)
  local base = ix_base(e)
  local pre = entry_name(e, '')  -- built once: concatenating the epoch number per key costs a sprintf each
  local names, by_ta, by_ts = {}, {}, {}  -- 'tenant#app' / 'tenant#service' -> member keys
  local function later(groups, name, key)
    local t = groups[name]
    if not t then t = {}; groups[name] = t end
    t[#t + 1] = key
  end
  for i = 1, #keys do
    local key = keys[i]
    local en = pre .. key
    local s
    if svcs then s = svcs[i] else s = redis.call('HGET', en, 's') end
    names[i] = en
    local ta, tenant = string.match(key, '^(([^#]+)#[^#]+)#')
    if ta then
      later(by_ta, ta, key)
      if s and s ~= '' then later(by_ts, tenant .. '#' .. s, key) end
    end
  end
  local removed = chunked('UNLINK', nil, names)
  chunked('ZREM', base .. ':all', keys)
  for name, members in pairs(by_ta) do
    if base .. ':ta:' .. name ~= skip_ix then chunked('ZREM', base .. ':ta:' .. name, members) end
  end
  for name, members in pairs(by_ts) do
    if base .. ':ts:' .. name ~= skip_ix then chunked('ZREM', base .. ':ts:' .. name, members) end
  end
  return removed
end
-- an index's members and their entries' services in one command: SORT ... GET {entry}->s reads every hash
-- field server-side instead of one HGET per key (the prefix must not hold '*' or '->': then nil, use HGET)
local function members_and_services(e, ix)
  if string.find(P, '*', 1, true) or string.find(P, '->', 1, true) then
    return redis.call('ZRANGE', ix, 0, -1), nil
  end
  local flat = redis.call('SORT', ix, 'BY', 'nosort', 'GET', '#', 'GET', entry_name(e, '*') .. '->s')
  local keys, svcs = {}, {}
  for i = 1, #flat, 2 do
    keys[#keys + 1] = flat[i]
    svcs[#svcs + 1] = flat[i + 1]
  end
  return keys, svcs
end
"""

# get: ARGV 1 prefix, 2 key -> {1, value, service or ''} or {0, epoch, seq, now_ms} (get_or_load's fill token)
GET = _LIB + r"""
local e = current_epoch()
local vs = redis.call('HMGET', entry_name(e, ARGV[2]), 'v', 's')
if vs[1] then return {1, vs[1], vs[2] or ''} end
return {0, e, tonumber(redis.call('GET', P .. ':seq') or '0'), now_ms()}
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
if redis.call('EXISTS', entry_name(e, ARGV[2])) == 1 then return 2 end
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
if op == 'delete' then
  removed = drop_keys(e, {a}, nil)
  redis.call('SET', P .. ':inv:k:' .. a, redis.call('INCR', P .. ':seq'), 'PX', mttl)
  local t, app = string.match(a, '^([^#]+)#([^#]+)#')
  for _, x in ipairs({'key', a, 'tenant_id', t, 'app_id', app}) do table.insert(fields, x) end
elseif op == 'clear' or op == 'clear_service' then
  local kind = (op == 'clear') and 'ta' or 'ts'
  local ix = base .. ':' .. kind .. ':' .. a .. '#' .. b
  local keys, svcs = members_and_services(e, ix)
  removed = drop_keys(e, keys, ix, svcs)
  redis.call('UNLINK', ix)
  redis.call('SET', P .. ':inv:' .. kind .. ':' .. a .. '#' .. b, redis.call('INCR', P .. ':seq'), 'PX', mttl)
  local second = (op == 'clear') and 'app_id' or 'service_name'
  for _, x in ipairs({'tenant_id', a, second, b}) do table.insert(fields, x) end
elseif op == 'invalidate_all' then
  removed = redis.call('ZCOUNT', base .. ':all', now, '+inf')
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

# reclaim: free one batch of an old epoch's space. ARGV 1 prefix, 2 batch -> {entries freed, epochs left}
RECLAIM = _LIB + r"""
local old = redis.call('SRANDMEMBER', P .. ':reclaim')
if not old then return {0, 0} end
local batch = tonumber(ARGV[2])
local base = ix_base(old)
local members = redis.call('ZRANGE', base .. ':all', 0, batch - 1)
local entries = {}
for i, key in ipairs(members) do entries[i] = entry_name(old, key) end
local freed = chunked('UNLINK', nil, entries)
chunked('ZREM', base .. ':all', members)
if #members < batch then
  chunked('UNLINK', nil, redis.call('SPOP', base .. ':names', batch))
  if redis.call('SCARD', base .. ':names') == 0 then
    redis.call('UNLINK', base .. ':all', base .. ':names')
    redis.call('SREM', P .. ':reclaim', old)
  end
end
return {freed, redis.call('SCARD', P .. ':reclaim')}
"""

# count: ARGV 1 prefix -> live entries in the current epoch
COUNT = _LIB + r"""
return redis.call('ZCOUNT', ix_base(current_epoch()) .. ':all', now_ms(), '+inf')
"""
