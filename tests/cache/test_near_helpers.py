"""Helpers shared by the near-cache tests (no tests here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cache.follower import parse_id

T = TypeVar("T")


def wait_until(probe: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.01) -> T:
    """Poll ``probe`` until it returns something truthy; at the deadline fail naming ``what``."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)
        value = probe()
    return value


def feed_tail(client: redis.Redis, prefix: str) -> str:
    """The feed's last-generated id ("0-0" when there is no feed yet)."""
    try:
        info: Any = client.xinfo_stream(f"{prefix}:feed")
    except redis.ResponseError:
        return "0-0"
    last = info["last-generated-id"]
    return str(last.decode() if isinstance(last, bytes) else last)


def at_or_after(a: str, b: str) -> bool:
    return parse_id(a) >= parse_id(b)
