"""Celery ``send_task`` by name: the listener never imports worker code (DESIGN.md "Dependency direction").

The app is built from ``celeryconfig`` (serializer, routes, ...) with the broker URL from the listener's
settings. Publishing has a small retry budget (about a second) and short socket timeouts, so a dead or stalled
broker turns into :class:`~listener.errors.BrokerUnavailable` quickly and the event goes to the spool instead
of holding up the dispatcher.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from amqp.exceptions import AMQPError  # type: ignore[import-untyped]
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from listener.errors import BrokerUnavailable
from listener.redis_publish import RedisSender
from proxysync import constants as C
from proxysync.events import TaskCall

log = logging.getLogger("listener.sender")
# What "the broker did not take it" looks like from kombu's redis and amqp transports. Anything else is a bug.
_UNREACHABLE: tuple[type[BaseException], ...] = (KombuError, OSError, TimeoutError, RedisError, AMQPError)
RETRY_POLICY: dict[str, Any] = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.3,
    "interval_max": 0.5,
}
_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 1.0,
}  # short: spool instead


def build_app(broker_url: str) -> Celery:
    """A send-only Celery app: ``celeryconfig`` (when importable) plus our broker URL and publish limits.

    Queue routing and transport options are recomputed now (not at ``celeryconfig`` import time) so they
    follow this process's ``PROXYSYNC_QUEUE_PREFIX`` and the listener's own broker URL.
    """
    app = Celery("proxysync-listener", set_as_current=False)
    options: dict[str, Any] = {}
    try:
        config = importlib.import_module("celeryconfig")
    except ImportError:
        log.warning("celeryconfig is not importable: using Celery defaults with serializer=json")
        app.conf.update(task_serializer="json", accept_content=["json"])
    else:
        app.config_from_object(config)
        if callable(getattr(config, "routing", None)):
            app.conf.update(config.routing())
        if callable(getattr(config, "transport_options", None)):
            options.update(config.transport_options(broker_url))
    options.update(_TRANSPORT_OPTIONS)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=options,
        broker_connection_timeout=2.0,
        broker_connection_retry=False,
        task_ignore_result=True,
        # Flower learns of a task from the workers' received/started/succeeded events; a "task-sent" event per
        # frame would double the listener's publish cost (bench/listener_cost.py).
        task_send_sent_event=False,
    )
    return app


def make_sender(broker_url: str) -> CelerySender | RedisSender:
    """The sender for this broker: a plain LPUSH for Redis (listener/redis_publish.py), ``send_task`` else."""
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        keyprefix = ""
        try:
            config = importlib.import_module("celeryconfig")
        except ImportError:
            config = None
        if config is not None and callable(getattr(config, "transport_options", None)):
            keyprefix = str(config.transport_options(broker_url).get("global_keyprefix") or "")
        return RedisSender(broker_url, keyprefix=keyprefix)
    return CelerySender(broker_url)


class CelerySender:
    """Sends a :class:`TaskCall` by name to its queue; raises :class:`BrokerUnavailable` when it cannot."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.app = build_app(broker_url)

    def send(self, call: TaskCall) -> None:
        try:
            queue = C.queue_name(call.queue)
            # exchange + routing key spelled out: a task_routes entry must not redirect an explicit queue.
            # The anonymous exchange ("") delivers straight to the queue named by the routing key (AMQP's
            # default exchange; kombu's Redis transport skips its per-publish binding lookup, SMEMBERS + a new
            # client: ~300 us CPU and one round trip per frame, bench/listener_cost.py).
            self.app.send_task(
                call.name,
                kwargs=call.kwargs,
                task_id=call.task_id,
                queue=queue,
                exchange="",
                routing_key=queue,
                ignore_result=True,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def reachable(self, timeout_s: float = 1.0) -> bool:
        """A fresh connection answers within ``timeout_s`` (for readiness, and to restart spool replay)."""
        conn: Any = self.app.connection_for_write()
        try:
            conn.ensure_connection(max_retries=0, timeout=timeout_s)
            if conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()
            return True
        except _UNREACHABLE:
            return False
        finally:
            conn.release()

    def close(self) -> None:
        self.app.close()
