"""Benchmark: clear(tenant, app) and invalidate_all next to a naive SCAN MATCH + UNLINK, at 100 k and 1 M.

Method (one run, on a private redis-server started on a free port, so the machine's Redis is untouched):

* The cleared scope ``t0#app0`` (10 k entries) is written by the cache's own Lua ``write_entry`` (the code
  ``put`` runs), looped server-side; the rest of the total (other tenants/apps, 10 k blocks) by a bulk Lua
  writer producing the same layout with batched writes, so 1 M entries load in seconds. Key layout:
  ``t{i}#app{j}#/api/r{n}#CONFIG#prod``; every entry has one of 8 services and a 1 h TTL.
* The naive approach gets the same keys as plain strings ``{bench}:naive:{key}`` in DB 1 of the same
  server (its own DB, so its SCAN walks only its own 100 k / 1 M keys; sharing DB 0 with the cache would
  make it slower still), removed with ``SCAN MATCH {bench}:naive:t0#app0#* COUNT 1000`` + ``UNLINK`` per page.
* Each timing is client-side wall time (perf_counter) around the call, round trips included; clear and naive
  are repeated (the 10 k scope is re-written before each repetition) and the median is reported. Both use
  UNLINK: Redis frees big values (the cache's per-scope hash) in its background thread, small ones inline;
  each timed call starts once that thread is idle (INFO lazyfree_pending_objects == 0).
* invalidate_all is timed once with all N entries live, then repeated on the same keyspace (median).

Prints a table, then one JSON line: figures (ms), baseline (naive, ms) and ratios.
Acceptance: clear at 1 M >= 50x faster than naive; clear(1 M) / clear(100 k) <= 1.2; invalidate_all flat.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache import RouteAuthCache, scripts
from proxysync.redis_server import RedisServer

PREFIX = "bench"
BLOCK = 10_000  # entries per tenant+app block; block 0 is the cleared scope t0#app0
SERVICES = 8
TTL_MS = 3_600_000
REPS = 9

# Server-side bulk writer: blocks [b0, b1) of BLOCK entries each, through the cache's own write_entry.
LOAD = (
    scripts._LIB
    + r"""
local b0, b1, block, nsvc, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local e = current_epoch()
local now = now_ms()
for b = b0, b1 - 1 do
  local tenant = 't' .. math.floor(b / 10)
  local ta = tenant .. '#app' .. (b % 10)
  for n = 0, block - 1 do
    local key = ta .. '#/api/r' .. n .. '#CONFIG#prod'
    local svc = 'svc' .. (n % nsvc)
    write_entry(e, key, tenant, ta, '{"serviceName":"' .. svc .. '","n":' .. n .. '}', svc, ttl, now)
  end
end
return 1
"""
)
# Faster server-side writer for the bulk of the data (blocks that are never cleared): the same layout as
# write_entry (cache/scripts.py: the scope's hash, its expiry zset, its per-service zsets and sets, the
# epoch's entry counter and name sets) with batched writes. measure() checks it through the API.
BULK = (
    scripts._LIB
    + r"""
local b0, b1, block, nsvc, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local e = current_epoch()
local score = string.format('%d', now_ms() + ttl)
local base = ix_base(e)
local function batched(cmd, name, pairs_list)
  for i = 1, #pairs_list, 1000 do
    redis.call(cmd, name, unpack(pairs_list, i, math.min(i + 999, #pairs_list)))
  end
end
for b = b0, b1 - 1 do
  local tenant = 't' .. math.floor(b / 10)
  local ta = tenant .. '#app' .. (b % 10)
  local h, x, sset = scope(e, ta)
  local fields, scored, by_svc = {}, {}, {}
  for n = 0, block - 1 do
    local key = ta .. '#/api/r' .. n .. '#CONFIG#prod'
    local svc = 'svc' .. (n % nsvc)
    fields[#fields + 1] = key
    fields[#fields + 1] = score .. '\t' .. svc .. '\t{"serviceName":"' .. svc .. '","n":' .. n .. '}'
    scored[#scored + 1] = score
    scored[#scored + 1] = key
    by_svc[svc] = by_svc[svc] or {}
    table.insert(by_svc[svc], score)
    table.insert(by_svc[svc], key)
  end
  batched('HSET', h, fields)
  batched('ZADD', x, scored)
  redis.call('PEXPIREAT', h, score)
  redis.call('PEXPIREAT', x, score)
  redis.call('SADD', base .. ':names', h, x, sset)
  for svc, members in pairs(by_svc) do
    local tas = tas_name(e, ta, svc)
    batched('ZADD', tas, members)
    redis.call('PEXPIREAT', tas, score)
    redis.call('SADD', sset, svc)
    redis.call('SADD', ts_name(e, tenant, svc), ta)
    redis.call('SADD', base .. ':names', tas, ts_name(e, tenant, svc))
  end
  redis.call('SADD', base .. ':tas', ta)
  redis.call('INCRBY', base .. ':n', block)
end
return 1
"""
)
NAIVE_LOAD = r"""
local p, b0, b1, block = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for b = b0, b1 - 1 do
  local ta = 't' .. math.floor(b / 10) .. '#app' .. (b % 10)
  for n = 0, block - 1 do
    local key = ta .. '#/api/r' .. n .. '#CONFIG#prod'
    redis.call('SET', p .. ':naive:' .. key, '{"n":' .. n .. '}', 'PX', 3600000)
  end
end
return 1
"""


def load(client: redis.Redis, naive: redis.Redis, b0: int, b1: int, *, bulk: bool = False) -> None:
    """Write blocks [b0, b1) to the cache (DB 0) and as plain keys (DB 1), a few blocks per script call."""
    writer = client.register_script(BULK if bulk else LOAD)
    naive_writer = naive.register_script(NAIVE_LOAD)
    for start in range(b0, b1, 2):
        end = min(start + 2, b1)
        writer(args=[PREFIX, start, end, BLOCK, SERVICES, TTL_MS])
        naive_writer(args=[PREFIX, start, end, BLOCK])


def naive_clear(naive: redis.Redis, tenant: str, app: str) -> int:
    removed = 0
    cursor = 0
    while True:
        reply: tuple[int, list[bytes]] = naive.scan(  # type: ignore[assignment]  # sync client
            cursor, match=f"{PREFIX}:naive:{tenant}#{app}#*", count=1000
        )
        cursor, keys = reply
        if keys:
            removed += int(naive.unlink(*keys))  # type: ignore[arg-type]  # sync client
        if cursor == 0:
            return removed


def settle(client: redis.Redis) -> None:
    """Wait until Redis' background thread has freed what earlier UNLINKs handed it (so it does not compete
    with the next timed call for the machine's cores)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]  # sync client
        if not int(memory.get("lazyfree_pending_objects", 0)):
            return
        time.sleep(0.005)


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return (time.perf_counter() - t0) * 1000.0, n


def server_ms(client: redis.Redis) -> float:
    """Time the server spent executing commands since the last CONFIG RESETSTAT (INFO commandstats), in ms:
    the same figure without the client's round trips and scheduling noise."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]  # sync client
    skip = ("cmdstat_config|resetstat", "cmdstat_info")
    return sum(float(v["usec"]) for k, v in stats.items() if k not in skip) / 1000.0


def measure(cache: RouteAuthCache, client: redis.Redis, naive: redis.Redis) -> dict[str, float]:
    """clear vs naive on block 0 (re-written before each repetition), then invalidate_all."""
    clear_ms, naive_ms, clear_srv, naive_srv = [], [], [], []
    for _ in range(REPS):
        load(client, naive, 0, 1)
        settle(client)
        client.config_resetstat()
        ms, n = timed(lambda: cache.clear("t0", "app0"))
        assert n == BLOCK, n
        clear_ms.append(ms)
        clear_srv.append(server_ms(client))
        settle(client)
        client.config_resetstat()
        ms, n = timed(lambda: naive_clear(naive, "t0", "app0"))
        assert n == BLOCK, n
        naive_ms.append(ms)
        naive_srv.append(server_ms(client))
    load(client, naive, 0, 1)
    settle(client)
    live = cache.count()
    first_ms, hidden = timed(cache.invalidate_all)
    assert hidden == live, (hidden, live)
    again, again_srv = [], []
    for _ in range(3 * REPS):
        client.config_resetstat()
        again.append(timed(cache.invalidate_all)[0])
        again_srv.append(server_ms(client))
    return {
        "clear_server_ms": statistics.median(clear_srv),
        "clear_min_ms": min(clear_ms),
        "naive_min_ms": min(naive_ms),
        "naive_server_ms": statistics.median(naive_srv),
        "invalidate_all_server_ms": statistics.median(again_srv),
        "clear_ms": statistics.median(clear_ms),
        "naive_ms": statistics.median(naive_ms),
        "invalidate_all_first_ms": first_ms,
        "invalidate_all_ms": statistics.median(again),
        "live": float(live),
    }


def main() -> int:
    results: dict[int, dict[str, float]] = {}
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        naive = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
        cache = RouteAuthCache(client, prefix=PREFIX, ttl=3600)
        for total in (100_000, 1_000_000):
            t0 = time.perf_counter()
            load(client, naive, 1, total // BLOCK, bulk=True)  # block 0 is written by measure()
            load_s = time.perf_counter() - t0
            print(f"# loaded {total:,} entries (+ the same as plain keys) in {load_s:.1f} s", file=sys.stderr)
            results[total] = measure(cache, client, naive)
            results[total]["load_s"] = load_s
            t0 = time.perf_counter()
            freed = cache.reclaim()
            results[total]["reclaim_s"] = time.perf_counter() - t0
            results[total]["reclaimed"] = float(freed)
            naive.flushdb()  # a private server: reset the baseline's keyspace for the next size
        client.close()
        naive.close()
    small, big = results[100_000], results[1_000_000]
    print(
        f"{'total entries':>14} | {'clear 10k (ms)':>14} | {'SCAN+UNLINK (ms)':>16} | {'speed-up':>8} | "
        f"{'server: clear / SCAN (ms)':>25} | {'invalidate_all (ms)':>24} | {'reclaim (s)':>11}"
    )
    for total, r in results.items():
        print(
            f"{total:>14,} | {r['clear_ms']:>14.2f} | {r['naive_ms']:>16.1f} | "
            f"{r['naive_ms'] / r['clear_ms']:>7.0f}x | "
            f"{r['clear_server_ms']:>9.3f} / {r['naive_server_ms']:>13.1f} | "
            f"{r['invalidate_all_first_ms']:>5.3f} first, {r['invalidate_all_ms']:>5.3f} med | "
            f"{r['reclaim_s']:>11.2f}"
        )
    print(
        f"method: private redis-server, medians of {REPS}; clear = RouteAuthCache.clear('t0','app0') "
        f"removing {BLOCK:,} entries; naive = SCAN MATCH prefix:naive:t0#app0#* COUNT 1000 + UNLINK per page "
        "(own DB); invalidate_all: first call with every entry live, then the median of repeats"
    )
    speedup = big["naive_ms"] / big["clear_ms"]
    scaling = big["clear_ms"] / small["clear_ms"]
    scaling_min = big["clear_min_ms"] / small["clear_min_ms"]
    scaling_srv = big["clear_server_ms"] / small["clear_server_ms"]
    flat = big["invalidate_all_ms"] / small["invalidate_all_ms"]
    flat_srv = big["invalidate_all_server_ms"] / small["invalidate_all_server_ms"]
    print(
        "notes: sub-millisecond wall times on a shared machine are dominated by scheduling (the server's "
        "own time is the steady figure); the ratios below are given for all three"
    )
    print(
        f"acceptance: clear at 1 M {speedup:.0f}x faster than naive by wall median, "
        f"{big['naive_server_ms'] / big['clear_server_ms']:.0f}x by server time (>= 50); "
        f"clear 1 M / 100 k = {scaling:.2f} wall median, {scaling_min:.2f} wall min, "
        f"{scaling_srv:.2f} server (<= 1.2); invalidate_all 1 M / 100 k = {flat:.2f} wall, "
        f"{flat_srv:.2f} server (the same commands run at any size: tests/cache/test_invalidate.py)"
    )
    summary = {
        "bench": "cache_clear",
        "figures": {str(k): v for k, v in results.items()},
        "baseline": {"naive_scan_unlink_ms": {str(k): v["naive_ms"] for k, v in results.items()}},
        "ratios": {
            "speedup_1m": big["naive_ms"] / big["clear_ms"],
            "speedup_100k": small["naive_ms"] / small["clear_ms"],
            "clear_1m_over_100k": big["clear_ms"] / small["clear_ms"],
            "clear_server_1m_over_100k": scaling_srv,
            "clear_min_1m_over_100k": scaling_min,
            "speedup_server_1m": big["naive_server_ms"] / big["clear_server_ms"],
            "invalidate_all_server_1m_over_100k": flat_srv,
            "invalidate_all_1m_over_100k": big["invalidate_all_ms"] / small["invalidate_all_ms"],
            "invalidate_all_first_1m_over_100k": big["invalidate_all_first_ms"]
            / small["invalidate_all_first_ms"],
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
