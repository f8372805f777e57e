"""A real Celery worker for the task tests, once with Redis and once with RabbitMQ as broker.

Everything is private to the session: a cache Redis server of our own (tests stop and restart it), a unique
cache prefix, unique queue names (``PROXYSYNC_QUEUE_PREFIX``) and, on the shared Redis broker, a unique key
prefix, so other people's workers and ours never see each other's messages. Retry backoff is short (1 s, no
jitter).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_failure, task_postrun, task_retry

from cache import RouteAuthCache
from cache.feed import FeedEntry, read_feed
from proxysync.redis_server import RedisServer
from tasks.factory import create_app
from tasks.settings import WorkerSettings
from tests.conftest import unavailable
from tests.support.waiting import wait_for

AMQP_URL = os.environ.get("PROXYSYNC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
SESSION = uuid.uuid4().hex[:10]
TEST_POLICY = {"task_max_retries": 3, "task_retry_backoff": 1, "task_retry_backoff_max": 1,
               "task_retry_jitter": False, "task_max_deliveries": 3, "routes_coalesce_window": 3.0}


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    return wait_for(predicate, timeout, what, interval=0.05)


def amqp_answers(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@dataclass
class Broker:
    kind: str  # redis | amqp
    url: str
    queue_prefix: str
    keyprefix: str | None  # the Redis transport's global_keyprefix

    def transport_options(self) -> dict[str, Any]:
        from celeryconfig import transport_options

        opts = transport_options(self.url)
        if self.keyprefix:
            opts["global_keyprefix"] = self.keyprefix
        return opts

    def env(self) -> dict[str, str]:
        """Environment for a ``celery``/``proxysync`` subprocess on this broker."""
        out = {"CELERY_BROKER_URL": self.url, "PROXYSYNC_QUEUE_PREFIX": self.queue_prefix}
        if self.keyprefix:
            out["CELERY_BROKER_KEYPREFIX"] = self.keyprefix
        return out


@pytest.fixture(scope="session", params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Broker]:
    kind = request.param
    if kind == "redis":
        b = Broker(kind, redis_url, f"pstq-{SESSION}-r", f"pstq-{SESSION}-r:")
    else:
        if not amqp_answers(AMQP_URL):
            unavailable(f"RabbitMQ does not answer at {AMQP_URL}")
        b = Broker(kind, AMQP_URL, f"pstq-{SESSION}-a", None)
    yield b
    _clean_broker(b)


def _clean_broker(b: Broker) -> None:
    if b.keyprefix:
        client = redis.Redis.from_url(b.url)
        keys = list(client.scan_iter(match=f"{b.keyprefix}*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
        return
    from kombu import Connection

    with Connection(b.url, connect_timeout=2) as conn:
        channel = conn.channel()
        for suffix in ("invalidations", "routes"):
            try:
                channel.queue_delete(f"{b.queue_prefix}.{suffix}")
                channel.exchange_delete(f"{b.queue_prefix}.{suffix}")
            except Exception:
                channel = conn.channel()


@pytest.fixture(scope="session")
def cache_server() -> Iterator[RedisServer]:
    """The cache Redis: a private server, so tests may stop and restart it."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        unavailable(f"cannot start a private redis-server: {exc}")
        raise
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def settings(broker: Broker, cache_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
             ) -> WorkerSettings:
    return WorkerSettings(
        celery_broker_url=broker.url, cache_redis_url=cache_server.url,
        cache_prefix=f"pstc-{SESSION}-{broker.kind}",
        worker_dead_spool=str(tmp_path_factory.mktemp(f"dead-{broker.kind}")), **TEST_POLICY,
    )


@dataclass
class Outcomes:
    """What the in-process worker did, per task id (collected from Celery's signals)."""

    done: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    retries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[str, list[BaseException]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_done(self, task_id: str, n: int = 1, timeout: float = 20.0) -> list[Any]:
        return list(wait_until(lambda: len(self.done[task_id]) >= n and self.done[task_id], timeout,
                               f"task {task_id} to finish {n} time(s)"))


@pytest.fixture(scope="session")
def outcomes() -> Iterator[Outcomes]:
    out = Outcomes()

    def on_postrun(task_id: str | None = None, retval: Any = None, state: str | None = None,
                   **_: Any) -> None:
        if state == "SUCCESS" and task_id:
            with out.lock:
                out.done[task_id].append(retval)

    def on_retry(request: Any = None, **_: Any) -> None:
        with out.lock:
            out.retries[str(request.id)] += 1

    def on_failure(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        with out.lock:
            out.failures[str(task_id)].append(exception or RuntimeError("?"))

    task_postrun.connect(on_postrun, weak=False)
    task_retry.connect(on_retry, weak=False)
    task_failure.connect(on_failure, weak=False)
    yield out
    task_postrun.disconnect(on_postrun)
    task_retry.disconnect(on_retry)
    task_failure.disconnect(on_failure)


@pytest.fixture(scope="session")
def worker_app(broker: Broker, settings: WorkerSettings) -> Celery:
    # A short AMQP heartbeat wakes the worker loop often, so it stops in a second instead of ten.
    return create_app(settings, queue_prefix=broker.queue_prefix, broker_url=broker.url,
                      broker_transport_options=broker.transport_options(), broker_heartbeat=2)


@pytest.fixture(scope="session")
def worker(worker_app: Celery, outcomes: Outcomes) -> Iterator[Any]:
    with start_worker(worker_app, pool="threads", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=15.0) as w:
        yield w


@dataclass
class Harness:
    """One test's view of the session worker: send tasks, read the cache and the feed."""

    app: Celery
    settings: WorkerSettings
    broker: Broker
    server: RedisServer
    outcomes: Outcomes
    client: redis.Redis

    @property
    def prefix(self) -> str:
        return self.settings.cache_prefix

    @property
    def cache(self) -> RouteAuthCache:
        return RouteAuthCache(self.client, prefix=self.prefix)

    def send(self, name: str, *, task_id: str | None = None, **kwargs: Any) -> str:
        event_id = kwargs.setdefault("event_id", f"ev-{uuid.uuid4().hex[:16]}")
        kwargs.setdefault("event_time", time.time())
        self.app.send_task(name, kwargs=kwargs, task_id=task_id or event_id)
        return str(task_id or event_id)

    def feed(self, event_id: str | None = None) -> list[FeedEntry]:
        entries = read_feed(self.client, prefix=self.prefix, count=100_000)
        return [e for e in entries if event_id is None or e.event_id == event_id]

    def dead(self) -> list[dict[str, str]]:
        rows = self.client.xrange(f"{self.prefix}:dead")
        return [{k.decode(): v.decode() for k, v in f.items()} | {"id": i.decode()} for i, f in rows]

    def ensure_server(self) -> None:
        if self.server.proc is None:
            self.server.start()


@pytest.fixture
def h(worker_app: Celery, settings: WorkerSettings, broker: Broker, cache_server: RedisServer,
      outcomes: Outcomes, worker: Any) -> Iterator[Harness]:
    if cache_server.proc is None:
        cache_server.start()
    client = redis.Redis.from_url(cache_server.url)
    harness = Harness(worker_app, settings, broker, cache_server, outcomes, client)
    yield harness
    harness.ensure_server()
    client.close()


def spool_files(settings: WorkerSettings) -> list[Path]:
    d = settings.dead_spool()
    return sorted(d.glob("*.json")) if d.exists() else []
