"""NearCache on real Redis: start position, gaps (trim, falling behind, reconnect), route refresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cache import CacheUnavailableError, NearCache, Op, RouteAuthCache
from cache.feed import FeedEntry
from proxysync.redis_server import RedisServer
from tests.cache.test_near_helpers import at_or_after, feed_tail, wait_until

K1, K2, K3 = "t1#a1#/p1#CONFIG#prod", "t1#a1#/p2#CONFIG#prod", "t1#a2#/p3#CONFIG#prod"
OTHER = "t9#a9#/other#CONFIG#prod"


@pytest.fixture
def cache(redis_client: redis.Redis, prefix: str) -> RouteAuthCache:
    return RouteAuthCache(redis_client, prefix=prefix)


@pytest.fixture
def near_factory(cache: RouteAuthCache) -> Iterator[Any]:
    made: list[NearCache] = []

    def make(**kwargs: Any) -> NearCache:
        near = NearCache(cache, name=f"t{len(made)}", block_ms=kwargs.pop("block_ms", 500), **kwargs)
        made.append(near)
        assert near.following
        return near

    yield make
    for near in made:
        near.close()


def settle(cache: RouteAuthCache, near: NearCache) -> None:
    fid = cache.apply(Op.DELETE, key=OTHER).feed_id
    assert fid is not None
    wait_until(lambda: at_or_after(near.follower.last_id, fid), f"follower to reach {fid}")


def fill(cache: RouteAuthCache, near: NearCache, *keys: str) -> None:
    for i, key in enumerate(keys):
        cache.put(key, {"v": i, "serviceName": "s1"})
        assert near.get(key) == {"v": i, "serviceName": "s1"}
    assert set(near.local_keys()) == set(keys)


class Gate:
    """A drop listener that holds the follower thread on its first call (to let it fall behind)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, op: str, keys: list[str], entry: FeedEntry | None) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(10)


def test_starts_at_the_current_last_id_and_serves_locally(
    cache: RouteAuthCache, near_factory: Any, redis_client: redis.Redis, prefix: str
) -> None:
    # Given a feed with history (a delete of K1 applied before the gateway started)
    cache.put(K1, {"v": 0})
    cache.delete(K1)
    tail = feed_tail(redis_client, prefix)
    # When a near cache starts and K1 is written again
    near = near_factory()
    assert near.follower.last_id == tail
    fill(cache, near, K1)
    settle(cache, near)
    # Then the old delete was not replayed: K1 is still served locally
    assert near.local_keys() == [K1]
    assert near.get(K1) == {"v": 0, "serviceName": "s1"}
    s = near.stats()
    assert s["hits"] == 1 and s["fills"] == 1 and s["changes"] == {"delete": 1} and s["gaps"] == {}


def test_trimmed_past_the_follower_flushes_everything_local_and_says_so_once(
    cache: RouteAuthCache, near_factory: Any, redis_client: redis.Redis, prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.follower")
    near = near_factory()
    gate = near.on_drop(Gate())
    fill(cache, near, K1, K2, K3)
    # Given the follower held while applying one change
    cache.delete(OTHER)
    wait_until(gate.entered.is_set, "the follower to apply the first change")
    # When more changes are appended and the stream is trimmed past the follower's last id
    cache.delete(K1)
    redis_client.xtrim(f"{prefix}:feed", maxlen=0, approximate=False)
    gate.release.set()
    # Then everything local is dropped (K2, K3 too: trimmed entries might have covered them), said once
    wait_until(lambda: near.stats()["gaps"].get("trimmed") == 1, "a trim gap")
    assert near.local_keys() == []
    assert near.stats()["dropped"]["gap"] == 3  # K1 too: its delete was trimmed before the follower saw it
    assert sum("trimmed past" in r.getMessage() for r in caplog.records) == 1
    # And it keeps following: a new fill is served locally and the next change drops it
    assert near.get(K2) == {"v": 1, "serviceName": "s1"}
    assert near.local_keys() == [K2]
    cache.delete(K2)
    wait_until(lambda: K2 not in near, "K2 dropped after the gap")


def test_falling_behind_past_the_bound_flushes_everything_local(
    cache: RouteAuthCache, near_factory: Any
) -> None:
    near = near_factory(max_lag_entries=5)
    gate = near.on_drop(Gate())
    fill(cache, near, K1, K2)
    cache.delete(OTHER)
    wait_until(gate.entered.is_set, "the follower to apply the first change")
    for _ in range(12):  # 12 entries behind a bound of 5
        cache.delete(OTHER)
    gate.release.set()
    wait_until(lambda: near.stats()["gaps"].get("behind") == 1, "a behind gap")
    assert near.local_keys() == []
    settle(cache, near)
    assert near.following and near.stats()["feed_lag_entries"] == 0


def test_redis_reconnect_drops_everything_and_bypasses_local_until_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.follower")
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)
    cache = RouteAuthCache(client, prefix="near-reconnect")
    near = NearCache(cache, name="reconnect", block_ms=500)
    try:
        fill(cache, near, K1, K2)
        # When Redis goes away
        server.stop()
        wait_until(lambda: not near.following, "the follower to notice the outage")
        # Then nothing local is served any more
        assert near.local_keys() == []
        with pytest.raises(CacheUnavailableError):
            near.get(K1)
        # When Redis comes back (empty: it persisted nothing), the follower follows again from its tail
        first, server = server, RedisServer(port=server.port).start()
        first.cleanup()
        wait_until(lambda: near.following, "the follower to reconnect", timeout=20)
        gaps = near.stats()["gaps"]
        assert gaps == {"connection_lost": 1, "reconnect": 1}
        assert sum("lost Redis" in r.getMessage() for r in caplog.records) == 1
        fill(cache, near, K1)
        cache.delete(K1)
        wait_until(lambda: K1 not in near, "K1 dropped after the reconnect")
    finally:
        near.close()
        client.close()
        server.cleanup()


def test_crashing_refresh_callback_is_contained_and_the_follower_goes_on(
    cache: RouteAuthCache, near_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    near = near_factory()
    calls: list[str] = []

    def crash(entry: FeedEntry) -> None:
        raise RuntimeError("reload failed")

    near.on_routes_refresh(crash)
    near.on_routes_refresh(lambda entry: calls.append(entry.id))
    fill(cache, near, K1, K2)
    # When two refresh entries arrive and the first callback raises each time
    ids = [cache.apply(Op.ROUTES_REFRESH).feed_id, cache.apply(Op.ROUTES_REFRESH).feed_id]
    # Then the other callback still runs once per entry, the errors are logged and counted
    wait_until(lambda: len(calls) == 2, "two refresh callbacks")
    assert calls == ids
    wait_until(lambda: near.stats()["refresh_errors"] == 2, "two counted callback errors")
    assert near.stats()["refreshes"] == 2
    assert sum("route-refresh callback" in r.getMessage() for r in caplog.records) == 2
    # And invalidations keep flowing
    cache.clear("t1", "a1")
    wait_until(lambda: near.local_keys() == [], "clear applied after the crashes")
    assert near.follower.alive


def test_close_stops_the_follower_and_its_connection(
    cache: RouteAuthCache, redis_client: redis.Redis
) -> None:
    near = NearCache(cache, name="closing", block_ms=5000)
    assert near.following
    name = "proxysync-feed-follower-closing"

    def names() -> list[Any]:
        clients: Any = redis_client.client_list()
        return [c.get("name") for c in clients]

    assert name in names()
    near.close()
    assert not near.follower.alive
    assert not near.following
    wait_until(lambda: name not in names(), "the follower's connection to close")
    near.close()  # idempotent
