"""NearCache's local side without Redis: drops per change type, the fill guard, LRU and TTL bounds.

The follower is not started; feed entries are handed to the cache as the follower would (``feed_entries``,
``feed_gap``), and local fills go through the same ticket/finish path ``get``/``get_or_load``/``put`` use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from cache import NearCache, Op, RouteAuthCache
from cache.feed import FeedEntry

K1, K2, K3, K4 = ("t1#a1#/p1#C#e", "t1#a1#/p2#C#e", "t1#a2#/p3#C#e", "t2#a1#/p4#C#e")
SERVICES = {K1: "s1", K2: "s2", K3: "s1", K4: "s1"}


@pytest.fixture
def near() -> Iterator[NearCache]:
    client = redis.Redis(port=1)  # never contacted: nothing here reaches Redis
    n = NearCache(RouteAuthCache(client), start=False, maxsize=100)
    n.feed_gap(None, "0-0", serve=True)  # what the follower does once it has its start position
    yield n
    n.close()


def fill(near: NearCache, key: str, service: str | None = None, ticket: int | None = None) -> None:
    t = near._begin() if ticket is None else ticket
    near._finish(t, key, {"key": key}, service if service is not None else SERVICES.get(key))


def entry(op: Op, **fields: str) -> FeedEntry:
    return FeedEntry(id="1-0", op=op, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "left"),
    [
        (entry(Op.DELETE, key=K1, tenant_id="t1", app_id="a1"), {K2, K3, K4}),
        (entry(Op.CLEAR, tenant_id="t1", app_id="a1"), {K3, K4}),
        (entry(Op.CLEAR_SERVICE, tenant_id="t1", service_name="s1"), {K2, K4}),
        (entry(Op.INVALIDATE_ALL), set()),
        (entry(Op.ROUTES_REFRESH), {K1, K2, K3, K4}),
        (entry(Op.CLEAR, tenant_id="t3", app_id="a1"), {K1, K2, K3, K4}),
    ],
)
def test_each_change_drops_exactly_what_it_covers(near: NearCache, change: FeedEntry, left: set[str]) -> None:
    for key in (K1, K2, K3, K4):
        fill(near, key)
    near.feed_entries([change])
    assert set(near.local_keys()) == left
    assert near.stats()["changes"] == {change.op.value: 1}


def test_fill_covered_by_a_change_since_its_ticket_is_discarded(near: NearCache) -> None:
    for change, key, service in [
        (entry(Op.DELETE, key=K1), K1, "s1"),
        (entry(Op.CLEAR, tenant_id="t1", app_id="a1"), K2, "s2"),
        (entry(Op.CLEAR_SERVICE, tenant_id="t1", service_name="s9"), K3, "s9"),
        (entry(Op.INVALIDATE_ALL), K4, "s1"),
    ]:
        ticket = near._begin()
        near.feed_entries([change])
        fill(near, key, service, ticket)
        assert key not in near
    # a change that does not cover the key leaves the fill alone
    ticket = near._begin()
    near.feed_entries([entry(Op.CLEAR_SERVICE, tenant_id="t1", service_name="s2")])
    fill(near, K1, "s1", ticket)
    assert K1 in near
    assert near.stats()["fills_discarded"] == 4


def test_nothing_is_kept_while_not_following(near: NearCache) -> None:
    fill(near, K1)
    near.feed_gap("connection_lost", "1-0", serve=False)
    assert near.local_keys() == [] and not near.following
    fill(near, K2)
    assert near.local_keys() == []
    near.feed_gap("reconnect", "2-0", serve=True)
    fill(near, K2)
    assert near.local_keys() == [K2]
    assert near.stats()["gaps"] == {"connection_lost": 1, "reconnect": 1}


def test_lru_bound_evicts_the_least_recently_used(near: NearCache) -> None:
    near.maxsize = 2
    fill(near, K1)
    fill(near, K2)
    assert near._local(K1) is not None  # K1 used: K2 is now the least recently used
    fill(near, K3)
    assert near.local_keys() == [K1, K3]
    assert near.stats()["evictions"] == 1


def test_local_ttl_expires_entries(near: NearCache) -> None:
    near.ttl = 0.05
    fill(near, K1)
    assert near._local(K1) is not None
    time.sleep(0.06)
    assert near._local(K1) is None
    assert near.local_keys() == [] and near.stats()["expirations"] == 1


def test_scope_tables_are_forgotten_once_no_fill_is_in_flight(near: NearCache) -> None:
    ticket = near._begin()
    near.feed_entries([entry(Op.DELETE, key=K1)])
    assert near._inv_key
    fill(near, K2, ticket=ticket)
    assert not near._inv_key  # bounded: nothing kept when nothing can need it
    near.feed_entries([entry(Op.DELETE, key=K3)])
    assert not near._inv_key
