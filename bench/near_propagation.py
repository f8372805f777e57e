"""Change applied -> gateway-local drop: how long a NearCache in another process keeps an entry it covers.

Method: N keys are written to Redis; each of G gateway processes (multiprocessing, spawn) starts a NearCache
and reads every key so it is held locally, with an ``on_drop`` listener (run on the follower thread, right
after the local drop) that stamps ``time.monotonic_ns()`` per dropped key. The parent then deletes the keys
one by one with ``RouteAuthCache.apply(Op.DELETE, ...)`` (what a worker's task calls) at a fixed rate,
stamping the monotonic clock just before each call. Latency = drop stamp - apply-call stamp (CLOCK_MONOTONIC
is system-wide on Linux, so stamps from different processes compare). Baseline, measured in the same run: the
apply() round trip itself (the worker's own write being acknowledged); ratio = propagation p50 / apply p50.

    python bench/near_propagation.py [--redis-url URL] [--count 1000] [--rate 200] [--gateways 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import redis

from cache import NearCache, Op, RouteAuthCache
from cache.feed import FeedEntry
from proxysync.redis_server import RedisServer, redis_answers


def key_of(i: int) -> str:
    return f"bench#app{i % 10}#/route/{i}#CONFIG#prod"


def gateway(name: str, url: str, prefix: str, count: int, pipe: Connection) -> None:
    """One gateway process: hold every key locally, stamp each drop, report the stamps when asked."""
    client = redis.Redis.from_url(url)
    near = NearCache(RouteAuthCache(client, prefix=prefix), name=name, maxsize=count * 2, ttl=600)
    drops: dict[str, int] = {}

    def stamp(op: str, keys: list[str], entry: FeedEntry | None) -> None:
        now = time.monotonic_ns()
        for key in keys:
            drops.setdefault(key, now)

    near.on_drop(stamp)
    for i in range(count):
        near.get(key_of(i))
    pipe.send(("ready", len(near), near.following))
    pipe.recv()  # "collect"
    pipe.send(("drops", drops, near.stats()))
    near.close()
    client.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def row(label: str, values: list[float]) -> str:
    figures = [pct(values, 0.5), pct(values, 0.9), pct(values, 0.99), max(values, default=float("nan"))]
    return f"{label:<28}" + "".join(f"{v:>9.2f}" for v in figures) + f"{len(values):>8}"


def run(url: str, count: int, rate: float, gateways: int) -> dict[str, Any]:
    prefix = f"bench-near-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    cache = RouteAuthCache(client, prefix=prefix)
    try:
        for i in range(count):
            cache.put(key_of(i), {"upstream": f"http://u{i}", "serviceName": f"svc{i % 7}"})
        ctx = mp.get_context("spawn")
        pipes, procs = [], []
        for g in range(gateways):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=gateway, args=(f"gw{g + 1}", url, prefix, count, child), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for p in pipes:
            tag, held, following = p.recv()
            assert tag == "ready" and held == count and following, (held, following)
        for _ in range(50):  # warm up the follower path (covers nothing held)
            cache.apply(Op.DELETE, key="bench#warm#/up#CONFIG#prod")
        time.sleep(0.2)
        sent: dict[str, int] = {}
        rtt: list[float] = []
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic_ns()
            cache.apply(Op.DELETE, key=key_of(i))
            rtt.append((time.monotonic_ns() - t0) / 1e6)
            sent[key_of(i)] = t0
        time.sleep(1.0)
        per_gw: dict[str, list[float]] = {}
        lost = 0
        for g, p in enumerate(pipes):
            p.send("collect")
            _tag, drops, _stats = p.recv()
            per_gw[f"gw{g + 1}"] = [(drops[k] - t0) / 1e6 for k, t0 in sent.items() if k in drops]
            lost += sum(1 for k in sent if k not in drops)
        for proc in procs:
            proc.join(10)
        return {"per_gw": per_gw, "rtt": rtt, "lost": lost}
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0, help="changes per second")
    ap.add_argument("--gateways", type=int, default=2)
    args = ap.parse_args()
    server = None
    url = args.redis_url
    if not redis_answers(url):
        server = RedisServer().start()
        url = server.url
    try:
        res = run(url, args.count, args.rate, args.gateways)
    finally:
        if server is not None:
            server.cleanup()
    every = [v for vs in res["per_gw"].values() for v in vs]
    print(f"near_propagation: RouteAuthCache.apply(delete) -> NearCache local drop, {args.gateways} gateway "
          f"processes, {args.count} changes at {args.rate:g}/s, Redis {url}")
    print(f"{'ms':<28}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>8}")
    print(row("propagation (all gateways)", every))
    for name, values in res["per_gw"].items():
        print(row(f"  {name}", values))
    print(row("baseline: apply() round trip", res["rtt"]))
    print(f"lost (never dropped): {res['lost']}")
    base = statistics.median(res["rtt"])
    figures = {
        "bench": "near_propagation", "gateways": args.gateways, "changes": args.count,
        "rate_per_s": args.rate,
        "p50_ms": round(pct(every, 0.5), 3), "p90_ms": round(pct(every, 0.9), 3),
        "p99_ms": round(pct(every, 0.99), 3), "max_ms": round(max(every), 3), "lost": res["lost"],
        "baseline": "apply_rtt_p50_ms", "baseline_ms": round(base, 3),
        "ratio": round(pct(every, 0.5) / base, 2) if base else None,
    }
    print(json.dumps(figures))
    return 0 if res["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
