"""Fixtures for the listener's integration tests: real RabbitMQ Web-STOMP, the Messenger stand-in, real Redis.

Every test gets its own topic and its own Celery queue prefix (``PROXYSYNC_QUEUE_PREFIX``), so the tasks the
listener sends land in Redis lists nobody else consumes; :class:`BrokerQueues` reads them back.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import stomp

from listener.service import Listener
from listener.settings import load_settings
from proxysync import constants as C
from tests.conftest import unavailable
from tests.support.waiting import wait_for  # noqa: F401 - re-exported for the tests here

WEB_STOMP = ("127.0.0.1", 15674)
STOMP = ("127.0.0.1", 61613)




def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def event(kind: str, **payload: Any) -> str:
    return json.dumps(
        {
            "payload": {"type": kind, **payload},
            "timestamp": "2024-01-15T10:30:00Z",
            "source": "config-manager",
        }
    )


class BrokerQueues:
    """The Celery messages the listener left in the broker (Redis lists ``{prefix}.invalidations|routes``)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def tasks(self, suffix: str = C.QUEUE_INVALIDATIONS) -> list[dict[str, Any]]:
        """Oldest first (kombu LPUSHes and workers BRPOP)."""
        raw = self.client.lrange(C.queue_name(suffix, self.prefix), 0, -1)
        out = []
        for item in reversed(raw):
            msg = json.loads(item)
            _args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
            out.append({"name": msg["headers"]["task"], "id": msg["headers"]["id"], "kwargs": kwargs})
        return out

    def all(self) -> list[dict[str, Any]]:
        return self.tasks(C.QUEUE_INVALIDATIONS) + self.tasks(C.QUEUE_ROUTES)

    def events(self) -> list[dict[str, Any]]:
        """Tasks that came from events (not from the gap policy)."""
        return [t for t in self.all() if not t["id"].startswith("gap-")]

    def cleanup(self) -> None:
        for key in self.client.scan_iter(match=f"*{self.prefix}*", count=1000):
            self.client.unlink(key)


@pytest.fixture
def queue_prefix(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"lt-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(C.QUEUE_PREFIX_ENV, prefix)
    yield prefix
    BrokerQueues(redis_client, prefix).cleanup()


@pytest.fixture
def queues(redis_client: redis.Redis, queue_prefix: str) -> BrokerQueues:
    return BrokerQueues(redis_client, queue_prefix)


@pytest.fixture
def topic() -> str:
    return f"lt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_listener(
    tmp_path: Path, redis_url: str, topic: str, queue_prefix: str
) -> Iterator[Callable[..., Listener]]:
    """Start an in-process listener with fast test timings; every one started is stopped afterwards."""
    started: list[Listener] = []

    def make(*, spool_max: int = 100_000, stable_s: float = 30.0, **env: Any) -> Listener:
        values: dict[str, Any] = {
            "WEBSOCKET_CLIENT_TOPIC": topic,
            "WEBSOCKET_CLIENT_RETRY_INTERVAL": 100,
            "WEBSOCKET_CLIENT_RETRY_MAX": 500,
            "WEBSOCKET_CLIENT_HEARTBEAT": 2000,
            "LISTENER_HTTP_PORT": 0,
            "LISTENER_SPOOL_PATH": str(tmp_path / f"spool-{len(started)}.db"),
            "CELERY_BROKER_URL": redis_url,
        } | env
        listener = Listener(
            load_settings(**values), spool_max=spool_max, stable_s=stable_s, broker_retry_s=0.3
        ).start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop(5)


def subscribed(listener: Listener, count: int = 1) -> Callable[[], bool]:
    return lambda: (
        listener.supervisor.state.value == "SUBSCRIBED" and listener.supervisor.subscriptions >= count
    )


# --- RabbitMQ -----------------------------------------------------------------------------------------------


@pytest.fixture
def rabbit() -> dict[str, Any]:
    """Listener settings for RabbitMQ Web-STOMP (plain WebSocket, STOMP host "/")."""
    if not port_open(*WEB_STOMP) or not port_open(*STOMP):
        unavailable(
            "RabbitMQ Web-STOMP (15674) / STOMP (61613) not reachable: "
            "rabbitmq-plugins enable rabbitmq_stomp rabbitmq_web_stomp"
        )
    return {
        "WEBSOCKET_CLIENT_BASEURL": f"ws://{WEB_STOMP[0]}:{WEB_STOMP[1]}",
        "WEBSOCKET_CLIENT_ENDPOINT": "/ws",
        "WEBSOCKET_CLIENT_TRANSPORT": "websocket",
        "WEBSOCKET_CLIENT_STOMP_HOST": "/",
    }


RABBIT_TEST_VHOST = "proxysync-listener-test"


@pytest.fixture(scope="session")
def rabbit_vhost() -> str:
    """A vhost of the listener tests' own, so closing "our" connections never touches anyone else's."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is needed to make the listener tests' vhost and to drop its connections")
    for args in (
        ["add_vhost", RABBIT_TEST_VHOST],
        ["set_permissions", "-p", RABBIT_TEST_VHOST, "guest", ".*", ".*", ".*"],
    ):
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=False)
    return RABBIT_TEST_VHOST


def rabbit_drop_connections(vhost: str) -> None:
    """Close every connection in ``vhost`` server-side (Web-STOMP ones are not in list_connections)."""
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "listener test: drop"],
        capture_output=True,
        timeout=60,
        check=True,
    )


@pytest.fixture
def rabbit_publisher(
    rabbit: dict[str, Any], topic: str
) -> Iterator[Callable[..., Callable[[str | bytes], None]]]:
    """``rabbit_publisher(vhost)`` -> publish(body) to the test's topic via RabbitMQ's plain STOMP port."""
    conns: list[stomp.Connection] = []

    def open_for(vhost: str = "/") -> Callable[[str | bytes], None]:
        conn = stomp.Connection([STOMP], vhost=vhost)
        conn.connect(wait=True)
        conns.append(conn)
        return lambda body: conn.send(C.topic_destination(topic), body)

    yield open_for
    for conn in conns:
        if conn.is_connected():
            conn.disconnect()


@pytest.fixture
def rabbit_publish(
    rabbit_publisher: Callable[..., Callable[[str | bytes], None]],
) -> Callable[[str | bytes], None]:
    return rabbit_publisher("/")
