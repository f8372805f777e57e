"""End to end: Messenger stand-in -> listener -> Redis broker -> ``celery -A tasks worker`` -> the cache.

Everything is private to the test: queue prefix, cache prefix, topic. The worker is a subprocess (solo pool).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cache import Op, RouteAuthCache
from cache.feed import read_feed
from listener.service import Listener
from messenger.server import MessengerServer
from proxysync import constants as C
from tests.listener.conftest import event, subscribed, wait_for
from tests.support.processes import stop_group

BIN = Path(sys.executable).parent


@pytest.fixture
def worker(redis_url: str, queue_prefix: str, prefix: str, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | {
        "CELERY_BROKER_URL": redis_url,
        C.QUEUE_PREFIX_ENV: queue_prefix,
        "CACHE_REDIS_URL": redis_url,
        "CACHE_PREFIX": prefix,
        "CELERY_SEND_EVENTS": "0",
        "WORKER_DEAD_SPOOL": str(tmp_path / "dead"),
    }
    cmd = [
        str(BIN / "celery"),
        "-A",
        "tasks",
        "worker",
        "--pool",
        "solo",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-n",
        f"{queue_prefix}@%h",
        "-l",
        "INFO",
        "--logfile",
        str(log),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or (log.exists() and " ready." in log.read_text()),
            90,
            "the worker to be ready",
        )
        assert proc.poll() is None, log.read_text()[-3000:] if log.exists() else "worker exited"
        yield log
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_every_event_type_changes_the_cache_through_a_real_worker(
    worker: Path,
    make_listener: Callable[..., Listener],
    redis_client: redis.Redis,
    prefix: str,
    topic: str,
) -> None:
    cache = RouteAuthCache(redis_client, prefix=prefix)

    def applied(event_id: str) -> bool:
        return any(e.event_id == event_id for e in read_feed(redis_client, prefix=prefix, count=100_000))

    with MessengerServer() as messenger:
        # Given a subscribed listener whose start-up resync has been applied
        listener = make_listener(WEBSOCKET_CLIENT_BASEURL=messenger.url)
        wait_for(subscribed(listener), what="subscription")
        wait_for(
            lambda: (
                sum(
                    1
                    for e in read_feed(redis_client, prefix=prefix, count=1000)
                    if (e.event_id or "").startswith("gap-")
                )
                == 2
            ),
            60,
            "the gap resync applied",
        )
        keys = {
            "one": "tenant-1#app-1#/api/pay#CONFIG#production",
            "app": "tenant-1#app-2#/api/list#CONFIG#production",
            "svc": "tenant-2#app-3#/api/charge#AUTH#production",
            "other": "tenant-3#app-4#/api/x#CONFIG#production",
        }
        for name, key in keys.items():
            cache.put(key, {"route": name}, service="stripe" if name == "svc" else None)

        def publish(body: str) -> None:
            wait_for(lambda: messenger.publish(C.topic_destination(topic), body) == 1, what="publish")

        # When one event of each type arrives, the cache changes accordingly
        publish(event("CACHE_DELETE_INVALID", key=keys["one"], eventId="e2e-delete"))
        wait_for(lambda: applied("e2e-delete"), 60, "delete applied")
        assert cache.get(keys["one"]) is None and cache.get(keys["app"]) == {"route": "app"}

        publish(event("CACHE_CLEAR_INVALID", tenantId="tenant-1", appId="app-2", eventId="e2e-clear"))
        wait_for(lambda: applied("e2e-clear"), 60, "clear applied")
        assert cache.get(keys["app"]) is None and cache.get(keys["svc"]) == {"route": "svc"}

        publish(
            event(
                "CACHE_CLEAR_SERVICE_INVALID",
                tenantId="tenant-2",
                serviceName="stripe",
                eventId="e2e-service",
            )
        )
        wait_for(lambda: applied("e2e-service"), 60, "clear_service applied")
        assert cache.get(keys["svc"]) is None and cache.get(keys["other"]) == {"route": "other"}

        publish(event("ALL_CACHE_INVALID", eventId="e2e-all"))
        wait_for(lambda: applied("e2e-all"), 60, "invalidate_all applied")
        assert cache.get(keys["other"]) is None

        # (the worker coalesces refreshes: this one may be announced under a trailing refresh's id)
        publish(event("ROUTES_REFRESH", eventId="e2e-routes"))
        wait_for(
            lambda: (
                sum(
                    1
                    for e in read_feed(redis_client, prefix=prefix, count=100_000)
                    if e.op is Op.ROUTES_REFRESH
                )
                == 2
            ),
            60,
            "routes refresh announced",
        )
