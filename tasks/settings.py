"""The worker's own settings (everything Celery itself reads lives in ``celeryconfig.py``).

One pydantic-settings class, read from the environment; every default is written here once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cache.names import DEFAULT_PREFIX
from proxysync import constants as C

DEFAULT_BROKER_URL = C.DEFAULT_REDIS_URL


class WorkerSettings(BaseSettings):
    """Cache connection, retry policy, poison-message limit, route-refresh window, metrics."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    celery_broker_url: str = DEFAULT_BROKER_URL
    cache_redis_url: str | None = Field(default=None, description="default: the broker URL when it is redis://")
    cache_prefix: str = DEFAULT_PREFIX
    cache_socket_timeout: float = 5.0

    task_max_retries: int = 10
    task_retry_backoff: int = 1  # seconds; the n-th retry waits up to backoff * 2**n (full jitter)
    task_retry_backoff_max: int = 30
    task_retry_jitter: bool = True
    # deliveries of one message that never finished (its worker process died) before it is dead-lettered
    task_max_deliveries: int = 3

    routes_coalesce_window: float = 1.0  # seconds: at most a leading and a trailing refresh per window

    worker_metrics_port: int = 0  # 0 = no metrics server
    worker_dead_spool: str | None = None  # dead letters wait here while the cache Redis is unreachable

    def cache_url(self) -> str:
        """CACHE_REDIS_URL, else the broker's Redis, else the local default."""
        return C.cache_url(self.cache_redis_url, self.celery_broker_url)

    def dead_spool(self) -> Path:
        if self.worker_dead_spool:
            return Path(self.worker_dead_spool)
        return Path(tempfile.gettempdir()) / f"proxysync-dead-{self.cache_prefix}-{os.getuid()}"
