"""Publishing a task straight into kombu's Redis transport: one LPUSH per task.

Celery's ``send_task`` costs 0.6-1.8 ms of CPU per task here (message building, signals, producer pool,
kombu's publish wrapper; bench/listener_cost.py), which caps one listener at a few hundred events per second.
For a Redis broker the listener writes the very message ``send_task`` writes — Celery task protocol 2 inside
kombu's Redis envelope, JSON only, priority 0, the anonymous exchange (the queue named by the routing key) —
with one LPUSH: ~0.15 ms. Workers see no difference (tests/listener/test_redis_publish.py runs them on it).
AMQP brokers keep ``send_task`` (listener/sender.py).

:func:`task_message` is pure: the exact bytes, from a :class:`TaskCall` and a queue name.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

import redis
from redis.exceptions import RedisError

from listener.errors import BrokerUnavailable
from proxysync import constants as C
from proxysync.events import TaskCall

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def task_message(
    call: TaskCall, queue: str, *, origin: str = ORIGIN, delivery_tag: str | None = None
) -> bytes:
    """The kombu Redis envelope of a Celery protocol-2 task message (as ``send_task`` builds it)."""
    body = json.dumps([[], call.kwargs, _EMBED], separators=(", ", ": "))
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": call.name, "id": call.task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": call.task_id, "parent_id": None, "argsrepr": "()", "kwargsrepr": repr(call.kwargs),
            "origin": origin, "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": call.task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("utf-8")


class RedisSender:
    """Sends a :class:`TaskCall` to its queue on a Redis broker; :class:`BrokerUnavailable` when it cannot.

    ``keyprefix`` is kombu's ``global_keyprefix`` (``CELERY_BROKER_KEYPREFIX``): it prefixes the queue list.
    Short socket timeouts: a dead or stalled broker sends the event to the spool within about a second.
    """

    def __init__(self, broker_url: str, *, keyprefix: str = "", timeout_s: float = 1.0) -> None:
        self.broker_url = broker_url
        self.keyprefix = keyprefix
        self.client = redis.Redis.from_url(
            broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=10
        )

    def send(self, call: TaskCall) -> None:
        queue = C.queue_name(call.queue)
        message = task_message(call, queue)
        try:
            self.client.lpush(self.keyprefix + queue, message)
        except RedisError as first:
            try:  # one immediate retry on a fresh connection (a restarted broker, an idle cut)
                self.client.lpush(self.keyprefix + queue, message)
            except RedisError as exc:
                raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from first

    def queue_depth(self, suffix: str) -> int | None:
        """Messages waiting in a queue (delivery confirmation); ``None`` when the broker does not answer."""
        try:
            depth: int = self.client.llen(self.keyprefix + C.queue_name(suffix))  # type: ignore[assignment]
            return depth
        except RedisError:
            return None

    def reachable(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(self.client.ping())
        except RedisError:
            return False

    def close(self) -> None:
        self.client.close()
