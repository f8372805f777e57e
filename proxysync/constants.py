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

# Celery queues.
QUEUE_INVALIDATIONS: Final = "proxysync.invalidations"
QUEUE_ROUTES: Final = "proxysync.routes"

# Messenger defaults.
DEFAULT_TOPIC: Final = "proxy_config_events"
DEFAULT_ENDPOINT: Final = "/messenger/websocket"


def topic_destination(topic: str) -> str:
    """``proxy_config_events`` -> ``/topic/proxy_config_events`` (a full destination is kept as is)."""
    return topic if topic.startswith("/") else f"/topic/{topic}"
