"""Per-process state of a worker: its settings, and the Redis client and cache built from them on first use.

No module-level clients: each Celery app owns one :class:`Runtime`; the client is created lazily in the
process that uses it and rebuilt after a fork (a prefork child never shares its parent's sockets).
"""

from __future__ import annotations

import os
import threading

import redis

from cache import RouteAuthCache
from tasks.settings import WorkerSettings


class Runtime:
    """Settings plus the lazily built, per-process cache client."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = -1
        self._redis: redis.Redis | None = None
        self._cache: RouteAuthCache | None = None

    @property
    def prefix(self) -> str:
        return self.settings.cache_prefix

    def _build(self) -> None:
        s = self.settings
        client = redis.Redis.from_url(
            s.cache_url(),
            socket_timeout=s.cache_socket_timeout,
            socket_connect_timeout=s.cache_socket_timeout,
            health_check_interval=30,
        )
        self._redis = client
        self._cache = RouteAuthCache(client, prefix=s.cache_prefix)
        self._pid = os.getpid()

    def _ensure(self) -> None:
        if self._pid != os.getpid() or self._cache is None:
            with self._lock:
                if self._pid != os.getpid() or self._cache is None:
                    self._build()

    @property
    def redis(self) -> redis.Redis:
        self._ensure()
        assert self._redis is not None
        return self._redis

    @property
    def cache(self) -> RouteAuthCache:
        self._ensure()
        assert self._cache is not None
        return self._cache

    def close(self) -> None:
        with self._lock:
            if self._redis is not None and self._pid == os.getpid():
                self._redis.close()
            self._redis = self._cache = None
            self._pid = -1
