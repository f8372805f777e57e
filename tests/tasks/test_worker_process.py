"""A real ``celery -A tasks worker`` process with the prefork pool: kill -9 of its child mid-task, metrics.

Uses its own queues and cache prefix, so the session's in-process worker never takes its messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from cache import Op, RouteAuthCache
from cache.feed import FeedEntry, read_feed
from proxysync import constants as C
from proxysync.redis_server import RedisServer, free_port
from tasks.base import deliveries_key
from tasks.factory import create_app
from tasks.settings import WorkerSettings
from tests.support.processes import stop_group
from tests.tasks.conftest import SESSION, TEST_POLICY, Broker, wait_until

BIN = Path(sys.executable).parent


@dataclass
class ProcWorker:
    proc: subprocess.Popen[bytes]
    hostname: str
    log: Path
    metrics_port: int
    app: Celery  # sends to the worker's queues
    prefix: str
    client: redis.Redis

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def feed(self, event_id: str) -> list[FeedEntry]:
        entries = read_feed(self.client, prefix=self.prefix, count=100_000)
        return [e for e in entries if e.event_id == event_id]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def active_pid(self, task_id: str) -> int | None:
        """The pid of the pool process running ``task_id`` (remote control ``inspect active``)."""
        replies = self.app.control.inspect(destination=[self.hostname], timeout=1.0).active() or {}
        for tasks in replies.values():
            for t in tasks:
                if t.get("id") == task_id and t.get("worker_pid"):
                    return int(t["worker_pid"])
        return None


def _env(broker: Broker, queue_prefix: str, cache: RedisServer, prefix: str, port: int, tmp: Path
         ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(broker.env())
    env.update({
        "PROXYSYNC_QUEUE_PREFIX": queue_prefix, "CACHE_REDIS_URL": cache.url, "CACHE_PREFIX": prefix,
        "CACHE_SOCKET_TIMEOUT": "30", "WORKER_METRICS_PORT": str(port),
        "WORKER_DEAD_SPOOL": str(tmp / "dead"),
        "CELERY_BROKER_HEARTBEAT": "2", "CELERY_SEND_EVENTS": "0",
        **{k.upper(): str(v) for k, v in TEST_POLICY.items()},
    })
    return env


@pytest.fixture(scope="module")
def proc_worker(broker: Broker, cache_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ProcWorker]:
    tmp = tmp_path_factory.mktemp(f"procworker-{broker.kind}")
    queue_prefix = f"{broker.queue_prefix}-p"
    prefix = f"pstc-{SESSION}-{broker.kind}-p"
    port = free_port()
    hostname = f"pstw-{SESSION}-{broker.kind}@{uuid.uuid4().hex[:6]}"
    log = tmp / "worker.log"
    cmd = [str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "1",
           "--without-mingle", "--without-gossip", "--without-heartbeat", "-n", hostname, "-l", "INFO",
           "--logfile", str(log)]
    proc = subprocess.Popen(cmd, env=_env(broker, queue_prefix, cache_server, prefix, port, tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    settings = WorkerSettings(cache_redis_url=cache_server.url, cache_prefix=prefix)
    app = create_app(settings, queue_prefix=queue_prefix, broker_url=broker.url,
                     broker_transport_options=broker.transport_options())
    client = redis.Redis.from_url(cache_server.url)
    w = ProcWorker(proc, hostname, log, port, app, prefix, client)
    try:
        wait_until(lambda: proc.poll() is not None or " ready." in w.log_text(), 60, "the worker to be ready")
        assert proc.poll() is None, w.log_text()[-3000:]
        yield w
    finally:
        stop_group(proc)
        client.close()
        if not broker.keyprefix:
            from kombu import Connection

            with Connection(broker.url, connect_timeout=2) as conn:
                ch = conn.channel()
                for suffix in ("invalidations", "routes"):
                    ch.queue_delete(f"{queue_prefix}.{suffix}")
                    ch.exchange_delete(f"{queue_prefix}.{suffix}")


def _send(w: ProcWorker, name: str, **kwargs: Any) -> str:
    ev = kwargs.setdefault("event_id", f"ev-{uuid.uuid4().hex[:16]}")
    kwargs.setdefault("event_time", time.time())
    w.app.send_task(name, kwargs=kwargs, task_id=ev)
    return str(ev)


def test_kill_9_of_the_pool_child_mid_task_still_applies_once(proc_worker: ProcWorker) -> None:
    w = proc_worker
    cache = RouteAuthCache(w.client, prefix=w.prefix)
    u = uuid.uuid4().hex[:8]
    keys = [f"t-{u}#a-{u}#/api/{i}#CONFIG#production" for i in range(3)]
    for k in keys:
        cache.put(k, {"v": k})
    # Given the task is running in the pool child, held mid-way (cache Redis writes paused)
    w.client.execute_command("CLIENT", "PAUSE", 20000, "WRITE")
    try:
        ev = _send(w, C.TASK_CLEAR, tenant_id=f"t-{u}", app_id=f"a-{u}")
        pid = wait_until(lambda: w.active_pid(ev), 20, "the task to be running in a pool process")
        # When that process is killed with SIGKILL
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: "signal 9 (SIGKILL)" in w.log_text(), 20, "the worker to see its child die")
    finally:
        w.client.execute_command("CLIENT", "UNPAUSE")
    # Then the message is delivered again to a new child and applied, exactly once in effect
    entries = wait_until(lambda: w.feed(ev), 30, "the clear to be applied after the crash")
    assert all(cache.get(k) is None for k in keys)
    wait_until(lambda: not w.client.exists(deliveries_key(w.prefix, ev, 0)), 10, "the delivery to finish")
    assert len(w.feed(ev)) == 1 and entries[0].removed == 3
    assert cache.was_applied(ev)
    assert w.proc.poll() is None  # the worker itself lives on
    # And a second delivery of the same event changes nothing
    cache.put(keys[0], {"v": "new"})
    again = _send(w, C.TASK_CLEAR, tenant_id=f"t-{u}", app_id=f"a-{u}", event_id=ev)
    skipped = f"event={again} removed=0 (duplicate"
    wait_until(lambda: skipped in w.log_text(), 20, "the duplicate to be skipped")
    assert cache.get(keys[0]) == {"v": "new"} and len(w.feed(ev)) == 1


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            series, _, value = line.rpartition(" ")
            got = series[len(name):].strip("{}")
            if sorted(got.split(",")) == sorted(want.split(",")) if want else got == "":
                return float(value)
    return 0.0


def test_metrics_from_the_prefork_pool(proc_worker: ProcWorker) -> None:
    w = proc_worker
    cache = RouteAuthCache(w.client, prefix=w.prefix)
    u = uuid.uuid4().hex[:8]
    cache.put(f"t-{u}#a-{u}#/m#CONFIG#production", {"v": 1})
    # Given an applied clear, a duplicate of it and a permanent failure
    ev = _send(w, C.TASK_CLEAR, tenant_id=f"t-{u}", app_id=f"a-{u}", event_time=time.time() - 2.0)
    wait_until(lambda: w.feed(ev), 20, "the clear to be applied")
    _send(w, C.TASK_CLEAR, tenant_id=f"t-{u}", app_id=f"a-{u}", event_id=ev)
    bad = _send(w, C.TASK_DELETE, key="bad")
    wait_until(lambda: bad in w.log_text() and "dead letter" in w.log_text(), 20, "the dead letter")
    # Then the worker's /metrics (summed over pool processes) shows them
    def scraped() -> str | None:
        text = w.metrics()
        dups = _sample(text, "proxysync_worker_duplicates_skipped_total", op=Op.CLEAR.value)
        return text if dups >= 1 else None

    text = wait_until(scraped, 20, "the duplicate to be counted")
    assert _sample(text, "proxysync_worker_invalidations_applied_total", op="clear") >= 1
    assert _sample(text, "proxysync_worker_entries_removed_total", op="clear") >= 1
    assert _sample(text, "proxysync_worker_dead_letters_total", task=C.TASK_DELETE, reason="permanent") >= 1
    assert _sample(text, "proxysync_worker_propagation_latency_seconds_count", op="clear") >= 1
    count = _sample(text, "proxysync_worker_propagation_latency_seconds_count", op="clear")
    under_1s = _sample(text, "proxysync_worker_propagation_latency_seconds_bucket", op="clear", le="1.0")
    assert count >= 1 and under_1s < count  # the event sent 2 s "late" lands above the 1 s bucket
