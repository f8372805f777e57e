"""Route-refresh coalescing: leading + trailing edge per window, in Redis, so every worker shares one window.

State (under the cache prefix; all keys passed as KEYS)::

    {p}:rr:window        the open window: value = id of the refresh that opened it, expires after the window
    {p}:rr:pending       hash {id, t, n}: refreshes requested while the window was open (first id/time, count)
    {p}:rr:trail:{id}    a trailing refresh claimed, maybe not yet announced (a redelivery still announces)
    {p}:done:{id}        the cache library's applied-event marker (an announced refresh)

A request when no window is open (or it is the window's own opener, redelivered) *leads*: it opens the window,
clears ``pending`` (its own announcement, made right after, covers those) and announces. Otherwise it is
folded into ``pending``; the first one folded schedules a *trailing* refresh for when the window closes. The
trailing refresh claims ``pending`` (opening a new window) and announces. So a burst inside one window yields
at most two feed entries, and a request made during a refresh is always followed by an announcement made after
it: either the next leader's or the trailing one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from cache.names import done_key
from cache.store import redis_errors

# KEYS 1 window, 2 pending, 3 done:{id}; ARGV 1 id, 2 event_time, 3 window_ms, 4 pending_ttl_ms
# -> {'duplicate'} | {'lead'} | {'schedule', pttl_ms} | {'coalesced'}
REQUEST = r"""
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
local w = redis.call('GET', KEYS[1])
if (not w) or w == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return {'lead'}
end
if redis.call('HSETNX', KEYS[2], 'id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], 't', ARGV[2], 'n', 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {'schedule', math.max(redis.call('PTTL', KEYS[1]), 0)}
end
if redis.call('HGET', KEYS[2], 'id') == ARGV[1] then
  return {'schedule', math.max(redis.call('PTTL', KEYS[1]), 0)}
end
redis.call('HINCRBY', KEYS[2], 'n', 1)
return {'coalesced'}
"""

# KEYS 1 window, 2 pending, 3 done:{trail id}, 4 trail:{trail id}; ARGV 1 trail id, 2 owner id, 3 window_ms,
#      4 claim_ttl_ms -> {'duplicate'} | {'idle'} | {'trail', t, n}
FLUSH = r"""
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'trail', redis.call('HGET', KEYS[4], 't'), redis.call('HGET', KEYS[4], 'n')}
end
if redis.call('HGET', KEYS[2], 'id') ~= ARGV[2] then return {'idle'} end
redis.call('RENAME', KEYS[2], KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {'trail', redis.call('HGET', KEYS[4], 't'), redis.call('HGET', KEYS[4], 'n')}
"""

CLAIM_TTL_MS = 24 * 3600 * 1000


def window_key(prefix: str) -> str:
    return f"{prefix}:rr:window"


def pending_key(prefix: str) -> str:
    return f"{prefix}:rr:pending"


def trail_key(prefix: str, trail_id: str) -> str:
    return f"{prefix}:rr:trail:{trail_id}"


def trail_id(owner: str) -> str:
    """The trailing refresh's id (= its task id and event id), derived from the pending owner.

    Deterministic, so scheduling it twice (a redelivered request) announces once.
    """
    return "rr-trail-" + hashlib.sha256(owner.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # duplicate | lead | schedule | coalesced | idle | trail
    delay: float = 0.0  # schedule: seconds until the window closes
    event_time: float | None = None  # trail: when the first folded request was made
    folded: int = 0  # trail: how many requests it stands for


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Coalescer:
    def __init__(self, client: redis.Redis, prefix: str, *, window: float) -> None:
        self.client = client
        self.prefix = prefix
        self.window_ms = max(int(window * 1000), 1)
        self._request = client.register_script(REQUEST)
        self._flush = client.register_script(FLUSH)

    def request(self, event_id: str, event_time: float) -> Decision:
        keys = [window_key(self.prefix), pending_key(self.prefix), done_key(self.prefix, event_id)]
        with redis_errors("routes refresh"):
            reply = self._request(keys=keys, args=[event_id, repr(event_time), self.window_ms,
                                                   CLAIM_TTL_MS])
        action = _s(reply[0])
        delay = int(reply[1]) / 1000.0 if action == "schedule" else 0.0
        return Decision(action, delay=delay)

    def flush(self, trail: str, owner: str) -> Decision:
        keys = [window_key(self.prefix), pending_key(self.prefix), done_key(self.prefix, trail),
                trail_key(self.prefix, trail)]
        with redis_errors("routes refresh (trailing)"):
            reply = self._flush(keys=keys, args=[trail, owner, self.window_ms, CLAIM_TTL_MS])
        action = _s(reply[0])
        if action != "trail":
            return Decision(action)
        return Decision(action, event_time=float(_s(reply[1])), folded=int(_s(reply[2])))
