"""Every Celery setting, read from the environment (see README "Celery settings").

Loaded by ``tasks.app`` (``celery -A tasks worker|flower``) and by anything that sends tasks by name. Values
are read once, when this module is first imported. Why each non-default value:

* JSON only, both ways: a message in any other content type (pickle!) is refused by the worker, never
  executed.
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its task finished,
  and one whose worker process died (``kill -9``, OOM) goes back to the queue. Tasks are idempotent
  (``event_id``), so a second delivery is harmless; a message that keeps killing workers is dead-lettered (see
  ``tasks.base``).
* ``worker_prefetch_multiplier`` 4: tasks take a few milliseconds, so fetching them one round trip at a time
  halves a worker's rate (bench/throughput.py, variant ``prefetch4``); 4 per process hoards little, and what a
  dead worker had reserved comes back after the visibility timeout — or sooner, re-sent by the listener's
  delivery confirmation (listener/confirm.py).
* ``task_ignore_result`` unless ``CELERY_RESULT_BACKEND`` is set: the listener never waits for results, and a
  Redis result backend whose server is gone makes ``send_task`` block for ~19 s.
* Redis ``visibility_timeout`` (default 120 s) must exceed the longest time a reserved message can stay
  unacknowledged: the retry countdown cap (``TASK_RETRY_BACKOFF_MAX``, 30 s) plus the task time limit (60 s).
  It is also how long the messages of a worker that died as a whole wait before Redis redelivers them — keep
  it no larger than that.
"""

from __future__ import annotations

import os
from typing import Any

from kombu import Exchange, Queue  # type: ignore[attr-defined]

from proxysync.constants import QUEUE_INVALIDATIONS, QUEUE_ROUTES, TASK_ROUTES_REFRESH, queue_name


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _flag(name: str, default: bool) -> bool:
    return _env(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def routing(prefix: str | None = None) -> dict[str, Any]:
    """Queues and routes under a queue prefix (``PROXYSYNC_QUEUE_PREFIX``): invalidations vs route refresh."""
    inv, routes = queue_name(QUEUE_INVALIDATIONS, prefix), queue_name(QUEUE_ROUTES, prefix)
    return {
        "task_queues": (
            Queue(inv, Exchange(inv, type="direct"), routing_key=inv),  # type: ignore[no-untyped-call]
            Queue(routes, Exchange(routes, type="direct"), routing_key=routes),  # type: ignore[no-untyped-call]
        ),
        "task_default_queue": inv,
        "task_default_exchange": inv,
        "task_default_routing_key": inv,
        "task_routes": {
            TASK_ROUTES_REFRESH: {"queue": routes, "exchange": routes, "routing_key": routes},
            "proxysync.cache.*": {"queue": inv, "exchange": inv, "routing_key": inv},
        },
    }


def transport_options(url: str) -> dict[str, Any]:
    """Broker transport options by scheme (Redis: visibility timeout, key prefix; AMQP: confirms)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        opts: dict[str, Any] = {
            "visibility_timeout": int(_env("CELERY_VISIBILITY_TIMEOUT", "120")),
            "socket_connect_timeout": float(_env("CELERY_BROKER_CONNECT_TIMEOUT", "5")),
            "health_check_interval": 25,
            # kombu >= 5.5 sweeps for abandoned (visibility-timed-out) messages only every interval*throttle
            # seconds (10*10 by default): scan on every 10 s tick so a dead worker's messages come back soon.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        }
        keyprefix = os.environ.get("CELERY_BROKER_KEYPREFIX")
        if keyprefix:  # share one Redis between several environments without sharing unacked/binding keys
            opts["global_keyprefix"] = keyprefix
        return opts
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return {"confirm_publish": True, "connect_timeout": float(_env("CELERY_BROKER_CONNECT_TIMEOUT", "5"))}
    return {}


broker_url = _env("CELERY_BROKER_URL", "redis://localhost:6379/0")
broker_transport_options = transport_options(broker_url)
broker_connection_retry_on_startup = True
broker_connection_timeout = float(_env("CELERY_BROKER_CONNECT_TIMEOUT", "5"))
broker_heartbeat = int(_env("CELERY_BROKER_HEARTBEAT", "60"))  # AMQP; the worker loop also wakes this often

result_backend = os.environ.get("CELERY_RESULT_BACKEND") or None
task_ignore_result = result_backend is None
result_expires = int(_env("CELERY_RESULT_EXPIRES", "3600"))

task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
task_time_limit = int(_env("CELERY_TASK_TIME_LIMIT", "60"))
worker_prefetch_multiplier = int(_env("CELERY_WORKER_PREFETCH_MULTIPLIER", "4"))
worker_cancel_long_running_tasks_on_connection_loss = True
worker_concurrency = int(os.environ["CELERY_WORKER_CONCURRENCY"]) if os.environ.get(
    "CELERY_WORKER_CONCURRENCY") else None

# Task events for Flower (``celery -A tasks flower``).
worker_send_task_events = _flag("CELERY_SEND_EVENTS", True)
task_send_sent_event = _flag("CELERY_SEND_EVENTS", True)

_routing = routing()
task_queues = _routing["task_queues"]
task_default_queue = _routing["task_default_queue"]
task_default_exchange = _routing["task_default_exchange"]
task_default_routing_key = _routing["task_default_routing_key"]
task_routes = _routing["task_routes"]
