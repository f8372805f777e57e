"""Backlog throughput: Messenger -> listener -> broker, then broker -> one worker (then two), vs raw Celery
no-ops.

Method (one run; a private redis-server is broker and cache; unique queue/cache prefixes):

* ingest: the listener (``python -m listener``, SockJS to the in-process Messenger stand-in) runs with no
  worker; N CACHE_DELETE_INVALID events (keys that exist in the cache) are published back to back; ingest
  time = first publish -> the queue holds N tasks (LLEN polled every 10 ms). Baseline: N raw ``send_task``
  calls of the same task name and kwargs from one Python loop, with the listener's own send-only app
  (``listener.sender``).
* drain: then ``celery -A tasks worker -c 1 -E`` (prefork, shipped ``celeryconfig``: acks_late, prefetch 4) is
  started; drain time = the first message leaves the queue -> queue empty and nothing unacked (worker start-up
  excluded). Again with two such workers on a fresh backlog. Baseline: the same backlog of ``bench.noop``
  tasks (same kwargs, same ack policy, same settings; ``bench/_support.py:noop_app``) drained the same way.
* ratio = ours / raw for events/s (goal for the drain >= 0.8).
* ``--profile``: one more drain by a ``-P solo`` worker under cProfile (py-spy is used instead when
  installed), top functions printed. The listener's own per-frame costs are in ``bench/listener_cost.py``.

Default N = 2000 so that ``make bench`` stays under 10 minutes on a shared 2-core machine (this bench ~1.5
min); ``--events 100000`` is the issue's full backlog and takes roughly 15-25 minutes here.

    python bench/throughput.py [--events 2000] [--profile]
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as S
import redis

from cache import RouteAuthCache
from messenger.server import MessengerServer
from proxysync import constants as C

# Celery settings tried on the same backlog (1 worker), to tell the lead what a change would buy.
# (label, environment, worker pool)
VARIANTS: list[tuple[str, dict[str, str], str]] = [
    ("prefetch4", {"CELERY_WORKER_PREFETCH_MULTIPLIER": "4"}, "prefork"),
    ("no_events", {"CELERY_SEND_EVENTS": "0"}, "prefork"),
    ("prefetch4_no_events", {"CELERY_WORKER_PREFETCH_MULTIPLIER": "4", "CELERY_SEND_EVENTS": "0"}, "prefork"),
    ("solo_no_events", {"CELERY_SEND_EVENTS": "0"}, "solo"),
]


def queue_of(qp: str) -> str:
    return C.queue_name(C.QUEUE_INVALIDATIONS, qp)


def wait_backlog(client: redis.Redis, queue: str, n: int, t0: float, timeout: float) -> float:
    """Seconds from ``t0`` until the queue holds ``n`` messages."""
    S.wait_for(lambda: S.num(client.llen(queue)) >= n, timeout, f"{n} tasks in {queue}", poll=0.01)
    return time.monotonic() - t0


def drain(
    client: redis.Redis,
    env: dict[str, str],
    qp: str,
    n: int,
    workers: int,
    app: str,
    url: str,
    wrap: list[str] | None = None,
    pool: str = "prefork",
) -> tuple[float, list[S.Proc]]:
    events = env.get("CELERY_SEND_EVENTS") != "0"  # -E would override CELERY_SEND_EVENTS=0
    """Start ``workers`` workers on a backlog of ``n``; seconds from the first message taken to all acked."""
    queue = queue_of(qp)
    assert S.num(client.llen(queue)) == n, (client.llen(queue), n)
    procs = [
        S.start_worker(
            env,
            node=S.node_name(f"bench-tp-{app.split(':', maxsplit=1)[0].strip('_')}{i}"),
            queue_prefix=qp,
            app=app,
            pool=pool,
            wrap=wrap,
            events=events,
        )
        for i in range(workers)
    ]
    S.wait_for(
        lambda: S.num(client.llen(queue)) < n, 90, "the first message taken", poll=0.002, procs=tuple(procs)
    )
    t0 = time.monotonic()
    S.wait_for(
        lambda: S.num(client.llen(queue)) == 0 and S.num(client.hlen("unacked")) == 0,
        60 + n / 20,
        "the backlog drained",
        poll=0.01,
        procs=tuple(procs),
    )
    return time.monotonic() - t0, procs


def ours_backlog(
    server: MessengerServer, client: redis.Redis, cache: RouteAuthCache, dest: str, qp: str, n: int, tag: str
) -> tuple[float, float]:
    keys = [S.bench_key(tag, i) for i in range(n)]
    for k in keys:
        cache.put(k, {"upstream": "http://u", "serviceName": "svc"})
    bodies = [S.event_body(i, tag, k) for i, k in enumerate(keys)]
    t0 = time.monotonic()
    for b in bodies:
        server.publish(dest, b)
    published = time.monotonic() - t0
    return wait_backlog(client, queue_of(qp), n, t0, 60 + n / 20), published


def raw_backlog(url: str, qp: str, n: int, tag: str, task: str, cache: RouteAuthCache | None = None) -> float:
    """N ``send_task`` calls from one loop with the listener's send-only app (the floor for ingest)."""
    from listener.sender import build_app

    app = build_app(url)
    queue = queue_of(qp)
    client = redis.Redis.from_url(url)
    if cache is not None:  # our task: the keys exist, as in the listener-made backlog
        for i in range(n):
            cache.put(S.bench_key(tag, i), {"upstream": "http://u", "serviceName": "svc"})
    calls = [
        (f"r{tag}-{i}", {"event_id": f"r{tag}-{i}", "event_time": time.time(), "key": S.bench_key(tag, i)})
        for i in range(n)
    ]
    t0 = time.monotonic()
    for tid, kw in calls:
        app.send_task(
            task, kwargs=kw, task_id=tid, queue=queue, exchange="", routing_key=queue, ignore_result=True
        )
    took = wait_backlog(client, queue, n, t0, 60 + n / 20)
    app.close()
    client.close()
    return took


def profile_drain(client: redis.Redis, env: dict[str, str], qp: str, n: int, url: str) -> list[str]:
    out = S.OUT / "throughput-worker.prof"
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy")
    took, procs = drain(
        client,
        env,
        qp,
        n,
        1,
        "tasks",
        url,
        pool="solo",
        wrap=None if spy else ["-m", "cProfile", "-o", str(out)],
    )
    if spy:  # pragma: no cover - not installed here
        svg = S.OUT / "throughput-worker.svg"
        subprocess.run([spy, "record", "-d", "5", "-o", str(svg), "-p", str(procs[0].pid)], check=False)
    for p in procs:
        p.stop(30)
    lines = [
        f"profile: {n} tasks drained by one -P solo worker in {took:.2f}s ({n / took:.0f}/s) under cProfile "
        f"(adds overhead); {out}"
    ]
    if out.exists():
        for sort, restrict, what in (
            ("tottime", [10], "whole worker, by own time"),
            (
                "cumulative",
                [r"/work/main/(tasks|cache)/.*\((?!<module>)", 12],
                "our code (tasks/, cache/), cumulative",
            ),
        ):
            buf = io.StringIO()
            pstats.Stats(str(out), stream=buf).sort_stats(sort).print_stats(*restrict)
            text = buf.getvalue().splitlines()
            start = next((i for i, ln in enumerate(text) if ln.strip().startswith("ncalls")), 0)
            lines += [f"  -- {what}"] + [
                ln.replace(str(S.ROOT) + "/", "") for ln in text[start:] if ln.strip()
            ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--events",
        type=int,
        default=2000,
        help="backlog size (issue: 100000; default keeps make bench < 10 min)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="one more drain under cProfile (py-spy if installed)"
    )
    args = ap.parse_args()
    n = args.events
    rid = S.run_id()
    res: dict[str, Any] = {}
    prof: list[str] = []
    with S.private_redis() as rs:
        url = rs.url
        qp, rqp, cp = f"bench-tp-{rid}", f"bench-tp-raw-{rid}", f"bench-tp-{rid}"
        env = S.base_env(url, qp, cp)
        renv = S.base_env(url, rqp, cp)
        renv["PYTHONPATH"] = f"{S.ROOT / 'bench'}:{renv['PYTHONPATH']}"  # celery -A _support:noop_app
        client = redis.Redis.from_url(url)
        cache = RouteAuthCache(client, prefix=cp)
        topic = f"bench-tp-{rid}"
        server = MessengerServer("127.0.0.1", 0, heartbeat_ms=0).start()
        lst, ready = S.start_listener(env, name="listener-tp", messenger_url=server.url, topic=topic)
        procs: list[S.Proc] = [lst]
        try:
            S.wait_for(lambda: S.http_status(ready) == 200, 30, "listener /readyz", procs=(lst,))
            dest = f"/topic/{topic}"
            for workers in (1, 2):
                ingest, published = ours_backlog(server, client, cache, dest, qp, n, f"{rid}w{workers}")
                took, ws = drain(client, env, qp, n, workers, "tasks", url)
                procs += ws
                for w in ws:
                    w.stop(30)
                res[f"ours_{workers}w"] = {"ingest_s": ingest, "publish_s": published, "drain_s": took}
                rawin = raw_backlog(url, rqp, n, f"{rid}w{workers}", "bench.noop")
                rtook, ws = drain(client, renv, rqp, n, workers, "_support:noop_app", url)
                procs += ws
                for w in ws:
                    w.stop(30)
                res[f"raw_{workers}w"] = {"ingest_s": rawin, "drain_s": rtook}
            for label, extra, pool in VARIANTS:
                raw_backlog(url, qp, n, f"{rid}{label}", C.TASK_DELETE, cache)
                took, ws = drain(client, env | extra, qp, n, 1, "tasks", url, pool=pool)
                procs += ws
                for w in ws:
                    w.stop(30)
                res.setdefault("variants", {})[label] = {"drain_s": took, "env": extra, "pool": pool}
            if args.profile:
                ours_backlog(server, client, cache, dest, qp, n, f"{rid}prof")
                prof = profile_drain(client, env, qp, n, url)
            fed = S.num(client.xlen(f"{cp}:feed"))
        finally:
            for p in procs:
                p.stop()
            server.stop()
            client.close()
    return report(res, n, fed, prof)


def report(res: dict[str, Any], n: int, fed: int, prof: list[str]) -> int:
    print(
        f"throughput: backlog of {n} CACHE_DELETE_INVALID events; private redis-server as broker and cache; "
        "workers -c 1 prefork -E, shipped celeryconfig (acks_late, prefetch 4)"
    )
    print(f"{'stage':<44}{'ours ev/s':>10}{'raw ev/s':>10}{'ratio':>7}{'ours s':>9}{'raw s':>8}")
    figures: dict[str, Any] = {}
    for w in (1, 2):
        o, r = res[f"ours_{w}w"], res[f"raw_{w}w"]
        for stage, label in (
            ("ingest_s", f"ingest: Messenger -> listener -> broker ({w})"),
            ("drain_s", f"drain: broker -> {w} worker{'s' if w > 1 else ''}"),
        ):
            ours, raw = n / o[stage], n / r[stage]
            print(f"{label:<44}{ours:>10.0f}{raw:>10.0f}{ours / raw:>7.2f}{o[stage]:>9.2f}{r[stage]:>8.2f}")
            figures[f"{stage[:-2]}_{w}w"] = {
                "ours_per_s": round(ours, 1),
                "raw_per_s": round(raw, 1),
                "ratio": round(ours / raw, 3),
                "ours_s": round(o[stage], 3),
                "raw_s": round(r[stage], 3),
            }
        print(
            f"  (the stand-in took {o['publish_s']:.2f}s to accept the {n} publishes: "
            f"{n / o['publish_s']:.0f}/s offered)"
        )
    base = res["ours_1w"]["drain_s"]
    for label, v in res.get("variants", {}).items():
        env = " ".join(f"{k}={x}" for k, x in v["env"].items()) + (
            "" if v["pool"] == "prefork" else " -P solo"
        )
        print(
            f"{'drain, 1 worker, ' + env:<70}{n / v['drain_s']:>8.0f} ev/s  x{base / v['drain_s']:.2f} "
            "vs shipped settings"
        )
        figures[f"variant_{label}"] = {
            "ours_per_s": round(n / v["drain_s"], 1),
            "speedup": round(base / v["drain_s"], 3),
            "env": v["env"],
            "pool": v["pool"],
        }
    print(
        "baseline: ingest = raw send_task loop with the listener's send-only app; drain = bench.noop tasks, "
        "same settings"
    )
    for line in prof:
        print(line)
    expect = (2 + len(VARIANTS)) * n + (n if prof else 0)
    print(f"feed entries written: {fed} (expected {expect})")
    print(
        json.dumps(
            {
                "bench": "throughput",
                "events": n,
                "figures": figures,
                "baseline": "raw Celery: send_task loop (ingest), bench.noop tasks (drain), same "
                "broker+settings",
                "goal": {
                    "drain_ratio_min": 0.8,
                    "met_1w": figures["drain_1w"]["ratio"] >= 0.8,
                    "met_2w": figures["drain_2w"]["ratio"] >= 0.8,
                },
                "feed_entries": fed,
            }
        )
    )
    return 0 if fed == expect else 1


if __name__ == "__main__":
    sys.exit(main())
