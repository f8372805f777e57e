"""invalidate_all (O(1) epoch bump) and reclaim, event-id dedup, the feed entry of each op, command counts."""

from __future__ import annotations

import redis

from cache import Op, RouteAuthCache
from cache.feed import read_feed
from proxysync.redis_server import RedisServer
from tests.cache.conftest import command_calls, keys_under

K1 = "tenant-1#app-1#/api/payment#CONFIG#production"
K2 = "tenant-1#app-2#/api/orders#AUTH#production"


def fill(cache: RouteAuthCache, n: int, *, tenant: str = "t", app: str = "a") -> list[str]:
    keys = [f"{tenant}#{app}#/r{i}#CONFIG#prod" for i in range(n)]
    for i, k in enumerate(keys):
        cache.put(k, {"serviceName": f"s{i % 4}", "i": i}, ttl=0 if i % 2 else 60)  # half without TTL
    return keys


def test_invalidate_all_hides_everything_and_new_writes_are_visible(cache: RouteAuthCache) -> None:
    keys = fill(cache, 30)
    assert cache.invalidate_all() == 30
    assert cache.count() == 0
    assert all(cache.get(k) is None for k in keys)
    assert cache.clear("t", "a") == 0  # the old entries are out of every index's reach
    cache.put(keys[0], "fresh")
    assert cache.get(keys[0]) == "fresh"
    assert cache.count() == 1
    assert cache.epoch() == 1


def test_invalidate_all_issues_the_same_commands_whatever_the_size(private_redis: RedisServer) -> None:
    """O(1): the server runs the same commands for 10 entries and for 1 000 (from INFO commandstats)."""
    client = redis.Redis.from_url(private_redis.url)
    calls = []
    for n in (10, 1000):
        cache = RouteAuthCache(client, prefix=f"size{n}", ttl=0)
        for b in range(n // 10):
            fill(cache, 10, app=f"a{b}")
        client.config_resetstat()
        assert cache.invalidate_all() == n
        calls.append(command_calls(client))
    assert calls[0] == calls[1]
    assert sum(calls[0].values()) < 15
    assert not any("scan" in name or "keys" in name for name in calls[0])


def test_clear_issues_the_same_commands_whatever_the_sizes(private_redis: RedisServer) -> None:
    """clear(tenant, app) runs O(services of the scope) commands: the same for 8 or 800 entries in the scope,
    among no or 1 000 other entries; never SCAN/KEYS (the entries go whole with their scope's hash)."""
    client = redis.Redis.from_url(private_redis.url)
    calls = []
    for size, others in ((8, 0), (8, 1000), (800, 1000)):
        cache = RouteAuthCache(client, prefix=f"c{size}-{others}", ttl=0)
        fill(cache, size, tenant="t", app="target")
        for b in range(others // 500):
            fill(cache, 500, tenant=f"o{b}", app="a")
        client.config_resetstat()
        assert cache.clear("t", "target") == size
        calls.append(command_calls(client))
    assert calls[0] == calls[1] == calls[2]
    assert not any("scan" in name or "keys" in name for name in calls[0])


def test_clear_by_name_issues_commands_by_entries_removed_not_by_total(private_redis: RedisServer) -> None:
    """O(removed): clearing a service's 20 entries among 20 or among 1 000 others runs the same commands."""
    client = redis.Redis.from_url(private_redis.url)
    calls = []
    for others in (0, 1000):
        cache = RouteAuthCache(client, prefix=f"s{others}", ttl=0)
        fill(cache, 80, tenant="t", app="target")  # services s0..s3, 20 each
        for b in range(others // 500):
            fill(cache, 500, tenant=f"o{b}", app="a")
        client.config_resetstat()
        assert cache.clear_by_name("t", "s1") == 20
        calls.append(command_calls(client))
    assert calls[0] == calls[1]
    assert not any("scan" in name or "keys" in name for name in calls[0])


def test_reclaim_frees_every_old_epoch_key(
    cache: RouteAuthCache, redis_client: redis.Redis, prefix: str
) -> None:
    # Given entries with and without TTL across tenants, apps and services, some already cleared
    fill(cache, 40, app="a")
    fill(cache, 40, app="b")
    fill(cache, 10, tenant="u")
    cache.clear("t", "b")
    assert any(":ix:0:h:" in k for k in keys_under(redis_client, prefix))
    # When everything is invalidated and reclaimed in small batches
    assert cache.invalidate_all() == 50
    assert cache.pending_reclaim() == 1
    freed = cache.reclaim(batch=7, max_batches=2)  # 14 of the epoch's ~30 structures
    assert cache.pending_reclaim() == 1
    freed += cache.reclaim(batch=7)
    # Then every entry and index of the old epoch is gone; only the small bookkeeping keys remain
    assert freed == 50
    assert cache.pending_reclaim() == 0
    left = keys_under(redis_client, prefix)
    assert not [k for k in left if ":ix:0:" in k]
    assert {k.split(":", 1)[1].split(":")[0] for k in left} <= {"epoch", "seq", "feed", "inv"}
    assert cache.reclaim() == 0
    # And entries written in the new epoch are untouched by reclaim
    fill(cache, 5)
    cache.invalidate_all()
    fill(cache, 3)
    assert cache.reclaim() == 5
    assert cache.count() == 3


def test_event_id_dedup(cache: RouteAuthCache) -> None:
    cache.put(K1, 1)
    first = cache.apply(Op.DELETE, key=K1, event_id="ev-1")
    assert (first.removed, first.duplicate) == (1, False)
    assert first.feed_id
    cache.put(K1, 2)  # re-filled after the change: a redelivered event must not drop it again
    again = cache.apply(Op.DELETE, key=K1, event_id="ev-1")
    assert (again.removed, again.duplicate, again.feed_id) == (0, True, None)
    assert cache.get(K1) == 2
    assert cache.feed_length() == 1
    assert cache.was_applied("ev-1")
    assert not cache.was_applied("ev-2")
    for _ in range(3):
        cache.invalidate_all(event_id="ev-all")
    assert cache.epoch() == 1
    assert cache.feed_length() == 2
    assert cache.stats.snapshot()["duplicates"] == 3


def test_feed_entry_fields_per_op(cache: RouteAuthCache, redis_client: redis.Redis, prefix: str) -> None:
    cache.put(K1, {"serviceName": "stripe_payment"})
    cache.put(K2, 2)
    cache.apply(Op.DELETE, key=K1, event_id="e-del", feed_fields={"event_time": "1705314600.0"})
    cache.apply(Op.CLEAR, tenant_id="tenant-1", app_id="app-2", event_id="e-clear")
    cache.apply(Op.CLEAR_SERVICE, tenant_id="tenant-1", service_name="stripe_payment")
    cache.apply(Op.INVALIDATE_ALL, event_id="e-all")
    cache.apply(Op.ROUTES_REFRESH, event_id="e-routes")
    feed = read_feed(redis_client, prefix=prefix)
    got = [(e.op, e.key, e.tenant_id, e.app_id, e.service_name, e.event_id, e.removed) for e in feed]
    assert got == [
        (Op.DELETE, K1, "tenant-1", "app-1", None, "e-del", 1),
        (Op.CLEAR, None, "tenant-1", "app-2", None, "e-clear", 1),
        (Op.CLEAR_SERVICE, None, "tenant-1", None, "stripe_payment", None, 0),
        (Op.INVALIDATE_ALL, None, None, None, None, "e-all", 0),
        (Op.ROUTES_REFRESH, None, None, None, None, "e-routes", 0),
    ]
    assert feed[0].extra == {"event_time": "1705314600.0"}
    assert all(e.applied_at_ms > 1_700_000_000_000 for e in feed)
    assert [e.applied_at_ms for e in feed] == sorted(e.applied_at_ms for e in feed)
    # reading on from the last id gives nothing new; a new change appears after it
    assert read_feed(redis_client, prefix=prefix, last_id=feed[-1].id) == []
    cache.delete(K2)
    assert [e.op for e in read_feed(redis_client, prefix=prefix, last_id=feed[-1].id)] == [Op.DELETE]
