"""Failures map to two error types: transient (CacheUnavailableError, retry), permanent (CachePermanentError).

Each test uses a redis-server of its own, so it can be stopped, paused, made read-only or given a password.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cache import CachePermanentError, CacheUnavailableError, RouteAuthCache
from proxysync.redis_server import RedisServer, free_port
from tests.cache.conftest import wait_for

K1 = "tenant-1#app-1#/api/payment#CONFIG#production"


def client_for(server: RedisServer, **kw: Any) -> redis.Redis:
    return redis.Redis.from_url(server.url, **{"socket_connect_timeout": 0.5, "socket_timeout": 1.0, **kw})


def operations(cache: RouteAuthCache) -> list[tuple[str, Callable[[], object]]]:
    """(what the error message names, the call)."""
    return [
        ("get", lambda: cache.get(K1)),
        ("put", lambda: cache.put(K1, 1)),
        ("get", lambda: cache.get_or_load(K1, lambda k: 1)),
        ("delete", lambda: cache.delete(K1)),
        ("clear", lambda: cache.clear("tenant-1", "app-1")),
        ("clear_service", lambda: cache.clear_by_name("tenant-1", "svc")),
        ("invalidate_all", cache.invalidate_all),
        ("reclaim", cache.reclaim),
        ("count", cache.count),
    ]


def test_server_down_is_transient_and_recovers(private_redis: RedisServer) -> None:
    cache = RouteAuthCache(client_for(private_redis), prefix="p")
    cache.put(K1, "before")
    # When the server goes away, every operation raises the transient error, naming the operation
    private_redis.stop()
    for name, op in operations(cache):
        with pytest.raises(CacheUnavailableError, match=f"^{name}: Redis unavailable"):
            op()
    # And once it is back the same cache object works again (a retry succeeds)
    private_redis.start()
    cache.put(K1, "after")
    assert cache.get(K1) == "after"


def test_paused_server_times_out_as_transient(private_redis: RedisServer) -> None:
    admin = client_for(private_redis)
    cache = RouteAuthCache(client_for(private_redis, socket_timeout=0.2), prefix="p")
    cache.put(K1, 1)
    admin.client_pause(1500, all=True)
    t0 = time.monotonic()
    with pytest.raises(CacheUnavailableError, match="TimeoutError"):
        cache.get(K1)
    wait_for(lambda: time.monotonic() - t0 > 1.6, "the pause to end")
    assert cache.get(K1) == 1


def test_read_only_replica_is_transient(private_redis: RedisServer) -> None:
    admin = client_for(private_redis)
    cache = RouteAuthCache(client_for(private_redis), prefix="p")
    admin.replicaof("127.0.0.1", str(free_port()))  # a master that does not exist: read-only meanwhile
    try:
        with pytest.raises(CacheUnavailableError, match="ReadOnlyError"):
            cache.put(K1, 1)
        assert cache.get(K1) is None  # reads still work
    finally:
        admin.replicaof("NO", "ONE")
    cache.put(K1, 1)
    assert cache.get(K1) == 1


def test_authentication_refused_is_permanent(private_redis: RedisServer) -> None:
    admin = client_for(private_redis)
    admin.config_set("requirepass", "s3cret")
    try:
        cache = RouteAuthCache(client_for(private_redis), prefix="p")
        with pytest.raises(CachePermanentError, match="authentication"):
            cache.get(K1)
        wrong = RouteAuthCache(client_for(private_redis, password="wrong"), prefix="p")
        with pytest.raises(CachePermanentError, match="authentication"):
            wrong.get(K1)
    finally:
        client_for(private_redis, password="s3cret").config_set("requirepass", "")


def test_wrong_type_is_permanent(cache: RouteAuthCache, redis_client: redis.Redis, prefix: str) -> None:
    redis_client.set(f"{prefix}:ix:0:h:tenant-1#app-1", "not a hash")
    with pytest.raises(CachePermanentError, match="WRONGTYPE"):
        cache.get(K1)
    redis_client.set(f"{prefix}:epoch", "not a number")
    with pytest.raises(CachePermanentError, match="get: Redis error"):
        cache.get(K1)


def test_a_failed_change_is_not_marked_applied(
    cache: RouteAuthCache, redis_client: redis.Redis, prefix: str
) -> None:
    # Given an index damaged so that the clear script fails midway
    cache.put(K1, 1)
    redis_client.delete(f"{prefix}:ix:0:x:tenant-1#app-1")
    redis_client.set(f"{prefix}:ix:0:x:tenant-1#app-1", "damaged")
    with pytest.raises(CachePermanentError, match="WRONGTYPE"):
        cache.clear("tenant-1", "app-1", event_id="ev-1")
    # Then the event is not recorded as applied and no feed entry was written
    assert not cache.was_applied("ev-1")
    assert cache.feed_length() == 0
    # And once repaired, the retry (same event id) is applied, not dropped as a duplicate
    redis_client.delete(f"{prefix}:ix:0:x:tenant-1#app-1")
    result = cache.apply("clear", tenant_id="tenant-1", app_id="app-1", event_id="ev-1")
    assert not result.duplicate
    assert cache.was_applied("ev-1")
    assert cache.feed_length() == 1
