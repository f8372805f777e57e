"""Fixtures shared by the whole suite: the real Redis (or the embedded one), per-test key prefixes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from proxysync.redis_server import RedisServer, redis_answers

# Fuzz properties, not timings: no per-example deadline on a shared 2-core machine.
hypothesis_settings.register_profile("proxysync", deadline=None, print_blob=True)
hypothesis_settings.load_profile("proxysync")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MACHINE_REDIS = os.environ.get("PROXYSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str) -> None:
    """A service the suite needs is missing: fail in CI, skip loudly elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} (CI must provide it: see .ci/run)", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {what}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379, else an embedded redis-server started for the session."""
    if redis_answers(MACHINE_REDIS):
        yield MACHINE_REDIS
        return
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        unavailable(f"no Redis at {MACHINE_REDIS} and the embedded one did not start: {exc}")
        return
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is removed afterwards."""
    name = f"pstest-{uuid.uuid4().hex[:12]}"
    yield name
    batch = []
    for key in redis_client.scan_iter(match=f"{name}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            redis_client.unlink(*batch)
            batch.clear()
    if batch:
        redis_client.unlink(*batch)
