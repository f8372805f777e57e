"""Names that are a wire contract between processes: declared once, imported everywhere."""

from __future__ import annotations

from typing import Final

# Celery task names (the listener sends these by name; workers register them).
TASK_CLEAR: Final = "proxysync.cache.clear"
TASK_DELETE: Final = "proxysync.cache.delete"
TASK_INVALIDATE_ALL: Final = "proxysync.cache.invalidate_all"
TASK_CLEAR_SERVICE: Final = "proxysync.cache.clear_service"
TASK_ROUTES_REFRESH: Final = "proxysync.routes.refresh"
ALL_TASKS: Final = (TASK_CLEAR, TASK_DELETE, TASK_INVALIDATE_ALL, TASK_CLEAR_SERVICE, TASK_ROUTES_REFRESH)

# Celery queues: "{prefix}.invalidations" and "{prefix}.routes". The prefix comes from
# PROXYSYNC_QUEUE_PREFIX so
# several environments (or test sessions) can share one broker without consuming each other's tasks.
QUEUE_PREFIX_ENV: Final = "PROXYSYNC_QUEUE_PREFIX"
DEFAULT_QUEUE_PREFIX: Final = "proxysync"
QUEUE_INVALIDATIONS: Final = "invalidations"  # suffixes; use queue_name()
QUEUE_ROUTES: Final = "routes"


def queue_name(suffix: str, prefix: str | None = None) -> str:
    """The full queue name for ``QUEUE_INVALIDATIONS``/``QUEUE_ROUTES`` under the configured prefix."""
    import os

    return f"{prefix or os.environ.get(QUEUE_PREFIX_ENV) or DEFAULT_QUEUE_PREFIX}.{suffix}"


# Redis: the default broker, and the cache's default location (the broker's Redis when the broker is Redis).
DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"


def cache_url(cache_redis_url: str | None, broker_url: str) -> str:
    """CACHE_REDIS_URL, else the broker's Redis, else the local default: one rule for every process."""
    if cache_redis_url:
        return cache_redis_url
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return broker_url
    return DEFAULT_REDIS_URL


# Messenger defaults.
DEFAULT_TOPIC: Final = "proxy_config_events"
DEFAULT_ENDPOINT: Final = "/messenger/websocket"


def topic_destination(topic: str) -> str:
    """``proxy_config_events`` -> ``/topic/proxy_config_events`` (a full destination is kept as is)."""
    return topic if topic.startswith("/") else f"/topic/{topic}"
