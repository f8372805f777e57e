"""The local stale-fill race: a fill that read Redis (or the source) before a change must not survive it.

Fill threads are paused right after they read (Redis, or the config source through the loader) while changes
are applied and the follower does or does not catch up; hypothesis explores the interleavings. After
quiescence no key may hold, locally or in Redis, anything but the source's current value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import NearCache, Op, RouteAuthCache
from tests.cache.test_near_helpers import at_or_after, wait_until

KEYS = {  # key -> (tenant, app, service)
    "t1#a1#/p0#CONFIG#prod": ("t1", "a1", "s1"),
    "t1#a2#/p1#CONFIG#prod": ("t1", "a2", "s2"),
    "t1#a1#/p2#CONFIG#prod": ("t1", "a1", "s2"),
}
KEY_LIST = sorted(KEYS)
OTHER = "t9#a9#/other#CONFIG#prod"
CHANGES: list[dict[str, Any]] = [
    *({"op": Op.DELETE, "key": k} for k in KEY_LIST),
    {"op": Op.CLEAR, "tenant_id": "t1", "app_id": "a1"},
    {"op": Op.CLEAR, "tenant_id": "t1", "app_id": "a2"},
    {"op": Op.CLEAR_SERVICE, "tenant_id": "t1", "service_name": "s1"},
    {"op": Op.CLEAR_SERVICE, "tenant_id": "t1", "service_name": "s2"},
    {"op": Op.INVALIDATE_ALL},
    {"op": Op.DELETE, "key": OTHER},  # covers nothing held
]


def covered(change: dict[str, Any], key: str) -> bool:
    tenant, app, service = KEYS[key]
    op = change["op"]
    return (
        op is Op.INVALIDATE_ALL
        or (op is Op.DELETE and change["key"] == key)
        or (op is Op.CLEAR and (change["tenant_id"], change["app_id"]) == (tenant, app))
        or (op is Op.CLEAR_SERVICE and (change["tenant_id"], change["service_name"]) == (tenant, service))
    )


class Pause:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.release.wait(10)


class PausingCache(RouteAuthCache):
    """The real RouteAuthCache; a fill thread that registered a Pause stops right after reading Redis."""

    pauses: dict[int, Pause]

    def get_entry(self, key: str) -> tuple[Any, str | None] | None:
        found = super().get_entry(key)
        pause = self.pauses.get(threading.get_ident())
        if pause is not None:
            pause.hold()
        return found


class World:
    def __init__(self, cache: PausingCache, near: NearCache) -> None:
        self.cache, self.near = cache, near
        self.source: dict[str, dict[str, Any]] = {k: {"v": 0, "serviceName": KEYS[k][2]} for k in KEY_LIST}
        self.pending: list[tuple[threading.Thread, Pause]] = []

    def loader(self, key: str) -> Any:
        value = dict(self.source[key])  # read the source, then (maybe) pause before the value is used
        pause = self.cache.pauses.get(threading.get_ident())
        if pause is not None:
            pause.hold()
        return value

    def start_fill(self, key: str, how: str) -> None:
        pause = Pause()

        def run() -> None:
            self.cache.pauses[threading.get_ident()] = pause
            if how == "load":
                self.near.get_or_load(key, self.loader)
            else:
                self.near.get(key)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(lambda: pause.entered.is_set() or not thread.is_alive(), "the fill to read or finish")
        self.pending.append((thread, pause))

    def release(self, index: int) -> None:
        if self.pending:
            thread, pause = self.pending.pop(index % len(self.pending))
            pause.release.set()
            thread.join(10)

    def change(self, change: dict[str, Any]) -> None:
        for key in KEY_LIST:  # the configuration changes first, then its invalidation is applied
            if covered(change, key):
                self.source[key] = {**self.source[key], "v": self.source[key]["v"] + 1}
        self.cache.apply(**change)

    def sync(self) -> None:
        fid = self.cache.apply(Op.DELETE, key=OTHER).feed_id
        assert fid is not None
        wait_until(lambda: at_or_after(self.near.follower.last_id, fid), f"follower to reach {fid}")

    def quiesce_and_check(self) -> None:
        while self.pending:
            self.release(0)
        self.sync()
        for key in KEY_LIST:
            local, shared = self.near.peek(key), self.cache.get(key)
            assert local is None or local == self.source[key], (key, local, self.source[key])
            assert shared is None or shared == self.source[key], (key, shared, self.source[key])


@pytest.fixture
def world(redis_client: redis.Redis, prefix: str) -> Iterator[World]:
    cache = PausingCache(redis_client, prefix=prefix)
    cache.pauses = {}
    near = NearCache(cache, name="race", block_ms=500)
    try:
        yield World(cache, near)
    finally:
        near.close()


STEP = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(KEY_LIST), st.sampled_from(["load", "get"])),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.tuples(st.just("change"), st.sampled_from(range(len(CHANGES)))),
    st.tuples(st.just("sync")),
)


def test_nothing_stale_survives_any_interleaving(world: World) -> None:
    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(STEP, min_size=1, max_size=12))
    def run(steps: list[tuple[Any, ...]]) -> None:
        for key in KEY_LIST:  # Redis starts each example holding the current values
            world.cache.put(key, world.source[key])
        for step in steps:
            if step[0] == "fill":
                world.start_fill(step[1], step[2])
            elif step[0] == "release":
                world.release(step[1])
            elif step[0] == "change":
                world.change(CHANGES[step[1]])
            else:
                world.sync()
        world.quiesce_and_check()

    run()
    assert world.near.stats()["fills_discarded"] > 0  # the guard was exercised, not just the follower


def test_fill_that_read_before_a_seen_change_is_discarded(world: World) -> None:
    key = KEY_LIST[0]
    world.cache.put(key, world.source[key])
    # Given a fill that read the old value from Redis
    world.start_fill(key, "get")
    # When the change is applied and the follower has already applied it
    world.change({"op": Op.CLEAR_SERVICE, "tenant_id": "t1", "service_name": "s1"})
    world.sync()
    before = world.near.stats()["fills_discarded"]
    world.release(0)
    # Then the fill returned its (old) value to its caller but did not keep it locally
    assert world.near.peek(key) is None
    assert world.near.stats()["fills_discarded"] == before + 1
    world.quiesce_and_check()
