"""End to end through a real Celery worker: tasks sent by name -> a worker applies them -> two gateways drop.

The worker is a ``celery -A tasks worker`` subprocess on the machine Redis as broker, isolated by its own
queue prefix and broker key prefix; the cache lives under a prefix of this module's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from cache import Op, RouteAuthCache
from cache.feed import read_feed
from proxysync import constants as C
from tests.cache.test_near_gateways import (
    ALL,
    K1,
    K2,
    K3,
    K6,
    ROUTES,
    GatewayProcess,
    fill_everything,
    settle,
)
from tests.cache.test_near_helpers import wait_until
from tests.support.processes import stop_group

BIN = Path(sys.executable).parent


@dataclass
class E2E:
    cache: RouteAuthCache
    gateways: list[GatewayProcess]
    app: Any

    def send(self, name: str, **kwargs: Any) -> str:
        ev = f"ev-{uuid.uuid4().hex[:16]}"
        self.app.send_task(name, kwargs={**kwargs, "event_id": ev, "event_time": time.time()}, task_id=ev)
        return ev

    def refresh_entries(self) -> int:
        entries = read_feed(self.cache.redis, prefix=self.cache.prefix, count=100_000)
        return sum(e.op is Op.ROUTES_REFRESH for e in entries)


@pytest.fixture(scope="module")
def e2e(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    from tasks.factory import create_app
    from tasks.settings import WorkerSettings

    run = uuid.uuid4().hex[:10]
    prefix, queue_prefix, keyprefix = f"pstest-near-e2e-{run}", f"pstq-near-{run}", f"pstq-near-{run}:"
    tmp = tmp_path_factory.mktemp("near-e2e")
    log = tmp / "worker.log"
    config = tmp / "routes.json"
    config.write_text(json.dumps(ROUTES))
    env = {**os.environ, "CELERY_BROKER_URL": redis_url, "CELERY_BROKER_KEYPREFIX": keyprefix,
           "PROXYSYNC_QUEUE_PREFIX": queue_prefix, "CACHE_REDIS_URL": redis_url, "CACHE_PREFIX": prefix,
           "WORKER_DEAD_SPOOL": str(tmp / "dead"), "ROUTES_COALESCE_WINDOW": "0.5", "CELERY_SEND_EVENTS": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "threads", "--concurrency", "2",
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-n", f"pstw-near-{run}@%h",
         "-l", "INFO", "--logfile", str(log)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = redis.Redis.from_url(redis_url)
    gateways: list[GatewayProcess] = []
    try:
        gateways = [GatewayProcess(f"gw{i}", redis_url, prefix, config) for i in (1, 2)]

        def ready() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:] if log.exists() else "worker exited"
            return log.exists() and " ready." in log.read_text()

        wait_until(ready, "the worker to be ready", timeout=60, interval=0.1)
        settings = WorkerSettings(cache_redis_url=redis_url, cache_prefix=prefix)
        app = create_app(settings, queue_prefix=queue_prefix, broker_url=redis_url,
                         broker_transport_options={"global_keyprefix": keyprefix})
        yield E2E(RouteAuthCache(client, prefix=prefix), gateways, app)
    finally:
        for gw in gateways:
            gw.stop()
        stop_group(worker)
        for pattern in (f"{prefix}:*", f"{keyprefix}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.unlink(*keys)
        client.close()


@pytest.mark.slow
def test_changes_through_the_worker_reach_both_gateways_exactly(e2e: E2E) -> None:
    cases = [
        (C.TASK_DELETE, {"key": K1}, {K1}),
        (C.TASK_CLEAR, {"tenant_id": "t1", "app_id": "a1"}, {K1, K2}),
        (C.TASK_CLEAR_SERVICE, {"tenant_id": "t1", "service_name": "s1"}, {K1, K3}),
        (C.TASK_CLEAR_SERVICE, {"tenant_id": "t1", "service_name": "s9"}, {K6}),
        (C.TASK_INVALIDATE_ALL, {}, ALL),
    ]
    for name, kwargs, dropped in cases:
        # Given both gateways hold every entry
        fill_everything(e2e.cache, e2e.gateways)
        # When the task is sent by name and a worker applies it
        ev = e2e.send(name, **kwargs)
        wait_until(lambda ev=ev: e2e.cache.was_applied(ev), f"{name} applied by the worker")
        settle(e2e.cache, e2e.gateways)
        # Then both gateways dropped exactly what it covers
        for gw in e2e.gateways:
            assert gw.local() == ALL - dropped, (name, gw.name)


@pytest.mark.slow
def test_coalesced_refresh_burst_calls_each_gateway_once_per_feed_entry(e2e: E2E) -> None:
    settle(e2e.cache, e2e.gateways)
    before = [gw.stats()["refresh_callbacks"] for gw in e2e.gateways]
    entries_before = e2e.refresh_entries()
    # When a burst of refresh requests goes through the worker (coalesced to a leading and a trailing entry)
    for _ in range(10):
        e2e.send(C.TASK_ROUTES_REFRESH)
    wait_until(lambda: e2e.refresh_entries() - entries_before >= 2, "a leading and a trailing refresh")
    time.sleep(1.0)  # the coalescing window (0.5 s here) is over: no further refresh entry is due
    settle(e2e.cache, e2e.gateways)
    announced = e2e.refresh_entries() - entries_before
    assert 2 <= announced < 10
    # Then each gateway's reload ran exactly once per refresh feed entry (not once per request)
    for gw, n in zip(e2e.gateways, before, strict=True):
        wait_until(lambda gw=gw, n=n: gw.stats()["refresh_callbacks"] - n >= announced, f"{gw.name} reloads")
        assert gw.stats()["refresh_callbacks"] - n == announced
