"""Worker-side cost of one invalidation task body, and the Redis commands in it.

Method (one process, a private redis-server as the cache): the shipped task ``proxysync.cache.delete`` runs
through Celery's ``Task.apply`` (the tracer a worker pool process runs, without the broker and the pool), N
times on fresh event ids, timed per call with ``time.perf_counter`` (wall) and ``time.thread_time`` (CPU).
Redis commands are counted by the server (``INFO commandstats`` before and after). Baseline in the same run: a
no-op task on a plain Celery app through the same ``apply``. The difference is what our task adds per event on
top of Celery: the delivery counter, the atomic apply, the counter removal, metrics and the log line.

    python bench/task_cost.py [--tasks 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as S
import redis


def commands(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    args = ap.parse_args()
    logging.disable(logging.INFO)  # the task's INFO line still formats; handlers would add I/O noise
    with S.private_redis() as rs, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(CACHE_REDIS_URL=rs.url, CELERY_BROKER_URL=rs.url, PROMETHEUS_MULTIPROC_DIR=tmp,
                          CACHE_PREFIX=f"bench-task-{S.run_id()}")
        from celery import Celery

        from tasks.factory import create_app

        app = create_app()
        ours = app.tasks["proxysync.cache.delete"]
        plain = Celery("bench-noop", set_as_current=False)
        def noop_body(**kwargs: Any) -> None:
            return None

        noop = plain.task(name="bench.noop", shared=False)(noop_body)
        client = redis.Redis.from_url(rs.url)

        def run(task: Any, n: int) -> tuple[list[float], list[float], int]:
            wall, cpu = [], []
            before = commands(client)
            for i in range(n):
                eid = f"ev-{uuid.uuid4().hex[:16]}"
                kwargs = {"key": f"t1#a1#/p{i}#CONFIG#prod", "event_id": eid, "event_time": time.time()}
                w0, c0 = time.perf_counter(), time.thread_time()
                task.apply(kwargs=kwargs, task_id=eid)
                cpu.append((time.thread_time() - c0) * 1e6)
                wall.append((time.perf_counter() - w0) * 1e6)
            return wall, cpu, commands(client) - before

        run(ours, 200)
        run(noop, 200)
        ow, oc, orr = run(ours, args.tasks)
        bw, bc, _ = run(noop, args.tasks)
    print(f"task_cost: {args.tasks} proxysync.cache.delete task bodies via Task.apply vs a no-op task, "
          "private redis-server")
    print(S.header("us per task", 40))
    print(S.row("ours: wall", ow, 40))
    print(S.row("ours: CPU", oc, 40))
    print(S.row("baseline no-op: wall", bw, 40))
    print(S.row("baseline no-op: CPU", bc, 40))
    per = orr / args.tasks
    o, b = S.summary(ow), S.summary(bw)
    print(f"Redis commands per task: {per:.2f} (counted by the server: a pipeline or a script counts each of "
          "its commands; round trips: 3, the counter pipeline, the apply script, the counter removal)")
    print(f"ours adds {o['p50'] - b['p50']:.0f} us wall per task over Celery's own apply")
    print(json.dumps({
        "bench": "task_cost", "tasks": args.tasks,
        "figures": {"wall_us": {k: S.r3(v) for k, v in o.items() if k != "n"},
                    "cpu_us_p50": S.r3(S.summary(oc)["p50"]), "redis_commands_per_task": round(per, 2)},
        "baseline": {"noop_wall_us_p50": S.r3(b["p50"]), "noop_cpu_us_p50": S.r3(S.summary(bc)["p50"])},
        "ratio": {"wall_p50": S.r3(o["p50"] / b["p50"])},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
