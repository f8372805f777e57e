"""RouteAuthCache against the real Redis: reads, writes, TTL, scoped clears, indexes, stats."""

from __future__ import annotations

import pytest
import redis

from cache import InvalidKeyError, InvalidValueError, RouteAuthCache
from tests.cache.conftest import keys_under, members, wait_for

K1 = "tenant-1#app-1#/api/payment#CONFIG#production"
K2 = "tenant-1#app-1#/api/orders#AUTH#production"
K_OTHER_APP = "tenant-1#app-2#/api/payment#CONFIG#production"
K_OTHER_TENANT = "tenant-2#app-1#/api/payment#CONFIG#production"


def test_put_get_round_trip(cache: RouteAuthCache) -> None:
    value = {
        "serviceName": "stripe_payment",
        "routes": [{"path": "/x", "weight": 0.5}],
        "on": True,
        "n": None,
    }
    cache.put(K1, value)
    assert cache.get(K1) == value
    cache.put(K2, "plain string")
    assert cache.get(K2) == "plain string"
    assert cache.get(K_OTHER_APP) is None
    assert cache.count() == 2


def test_put_validates_key_and_value(cache: RouteAuthCache) -> None:
    with pytest.raises(InvalidKeyError, match="expected 5"):
        cache.put("tenant#app", 1)
    with pytest.raises(InvalidKeyError, match="tenant part of cache key 't\\*'"):
        cache.get("t*#a#p#K#e")
    with pytest.raises(InvalidValueError, match="not JSON-serialisable"):
        cache.put(K1, {"x": object()})
    with pytest.raises(InvalidValueError):
        cache.put(K1, float("nan"))
    with pytest.raises(InvalidKeyError, match="serviceName of value"):
        cache.put(K1, {"serviceName": "a b"})
    assert cache.count() == 0


def test_ttl_expiry(cache: RouteAuthCache, redis_client: redis.Redis, prefix: str) -> None:
    cache.put(K1, 1, ttl=0.3)
    cache.put(K2, 2, ttl=0)  # no expiry
    cache.put(K_OTHER_APP, 3)  # the cache's default (60 s)
    assert cache.get(K1) == 1
    wait_for(lambda: cache.get(K1) is None, "the 0.3 s entry to expire")
    assert cache.get(K2) == 2
    ttl_app1: int = redis_client.pttl(f"{prefix}:ix:0:h:tenant-1#app-1")  # type: ignore[assignment]
    ttl_app2: int = redis_client.pttl(f"{prefix}:ix:0:h:tenant-1#app-2")  # type: ignore[assignment]
    assert ttl_app1 == -1  # the scope lives while K2 does
    assert 0 < ttl_app2 <= 60_000  # and expires with its last entry
    assert cache.count() == 2


def test_get_or_load(cache: RouteAuthCache) -> None:
    calls: list[str] = []

    def loader(key: str) -> dict[str, str]:
        calls.append(key)
        return {"serviceName": "svc", "v": "loaded"}

    assert cache.get_or_load(K1, loader) == {"serviceName": "svc", "v": "loaded"}
    assert cache.get_or_load(K1, loader) == {"serviceName": "svc", "v": "loaded"}
    assert calls == [K1]  # the second call was a hit
    assert cache.get(K1) == {"serviceName": "svc", "v": "loaded"}
    assert cache.clear_by_name("tenant-1", "svc") == 1  # indexed under the loaded value's serviceName
    # a loader answering None caches nothing
    assert cache.get_or_load(K2, lambda k: None) is None
    assert cache.get(K2) is None
    s = cache.stats.snapshot()
    assert (s["loads"], s["fills"]) == (2, 1)


def test_get_or_load_keeps_an_entry_written_meanwhile(cache: RouteAuthCache) -> None:
    def loader(key: str) -> str:
        cache.put(key, "authoritative")  # someone else wrote while we were loading
        return "loaded"

    assert cache.get_or_load(K1, loader) == "loaded"
    assert cache.get(K1) == "authoritative"


def test_delete_removes_exactly_one(cache: RouteAuthCache) -> None:
    for k in (K1, K2, K_OTHER_APP, K_OTHER_TENANT):
        cache.put(k, k)
    assert cache.delete(K1) == 1
    assert cache.delete(K1) == 0
    assert [cache.get(k) for k in (K1, K2, K_OTHER_APP, K_OTHER_TENANT)] == [
        None,
        K2,
        K_OTHER_APP,
        K_OTHER_TENANT,
    ]
    assert cache.count() == 3


def test_clear_removes_exactly_the_tenant_app(
    cache: RouteAuthCache, redis_client: redis.Redis, prefix: str
) -> None:
    # Given entries of tenant-1/app-1 and of neighbours sharing the tenant or the app id
    scope = [f"tenant-1#app-1#/r{i}#CONFIG#prod" for i in range(50)]
    for i, k in enumerate(scope):
        cache.put(k, {"serviceName": f"svc{i % 3}", "i": i})
    for k in (
        K_OTHER_APP,
        K_OTHER_TENANT,
        "tenant-10#app-1#/r1#CONFIG#prod",
        "tenant-1#app-10#/r1#CONFIG#prod",
    ):
        cache.put(k, {"serviceName": "svc0"})
    # When tenant-1/app-1 is cleared
    assert cache.clear("tenant-1", "app-1") == 50
    # Then exactly its entries are gone, everywhere, and the neighbours are intact
    assert all(cache.get(k) is None for k in scope)
    assert cache.count() == 4
    assert cache.get(K_OTHER_APP) == {"serviceName": "svc0"}
    ix = f"{prefix}:ix:0"
    assert not redis_client.exists(*(f"{ix}:{kind}:tenant-1#app-1" for kind in ("h", "x", "s")))
    assert not [k for k in keys_under(redis_client, prefix) if k.startswith(f"{ix}:tas:tenant-1#app-1#")]
    assert {m.decode() for m in redis_client.smembers(f"{ix}:ts:tenant-1#svc0")} == {  # type: ignore[union-attr]
        "tenant-1#app-2",
        "tenant-1#app-10",
    }
    assert members(redis_client, f"{ix}:tas:tenant-1#app-2#svc0") == {K_OTHER_APP}
    assert cache.clear("tenant-1", "app-1") == 0


def test_clear_by_name_removes_exactly_the_tenant_service(cache: RouteAuthCache) -> None:
    cache.put(K1, {"serviceName": "stripe_payment"})  # via the value
    cache.put(K2, {"other": 1}, service="stripe_payment")  # via put(service=)
    cache.put(K_OTHER_APP, {"serviceName": "stripe_payment"})  # same tenant, other app: covered
    cache.put(K_OTHER_TENANT, {"serviceName": "stripe_payment"})  # other tenant: survives
    cache.put("tenant-1#app-1#/x#CONFIG#prod", {"serviceName": "paypal"})  # other service: survives
    cache.put("tenant-1#app-1#/y#CONFIG#prod", {"none": 1})  # no service: survives
    assert cache.clear_by_name("tenant-1", "stripe_payment") == 3
    assert [cache.get(k) for k in (K1, K2, K_OTHER_APP)] == [None, None, None]
    assert cache.get(K_OTHER_TENANT) is not None
    assert cache.get("tenant-1#app-1#/x#CONFIG#prod") is not None
    assert cache.get("tenant-1#app-1#/y#CONFIG#prod") is not None
    assert cache.clear("tenant-1", "app-1") == 2  # the app index lost the service-cleared members too
    assert cache.count() == 1


def test_overwrite_moves_an_entry_between_services(
    cache: RouteAuthCache, redis_client: redis.Redis, prefix: str
) -> None:
    cache.put(K1, {"serviceName": "old"})
    cache.put(K2, {"serviceName": "old"})
    cache.put(K1, {"serviceName": "new"})
    assert members(redis_client, f"{prefix}:ix:0:tas:tenant-1#app-1#old") == {K2}
    assert members(redis_client, f"{prefix}:ix:0:tas:tenant-1#app-1#new") == {K1}
    assert cache.clear_by_name("tenant-1", "old") == 1
    assert cache.get(K1) == {"serviceName": "new"}
    cache.put(K1, {"no": "service"})  # and out of every service index
    assert not redis_client.exists(f"{prefix}:ix:0:tas:tenant-1#app-1#new")
    assert cache.clear_by_name("tenant-1", "new") == 0
    assert cache.get(K1) == {"no": "service"}
    fields: list[bytes] = redis_client.hkeys(f"{prefix}:ix:0:h:tenant-1#app-1")  # type: ignore[assignment]
    assert {k.decode() for k in fields} == {K1}


def test_expired_entries_do_not_pile_up_in_indexes(
    cache: RouteAuthCache, redis_client: redis.Redis, prefix: str
) -> None:
    # Given 200 short-lived entries in one tenant/app/service, then expiry
    for i in range(200):
        cache.put(f"t#a#/old{i}#K#e", {"serviceName": "s"}, ttl=0.2)
    wait_for(lambda: cache.count() == 0, "the short-lived entries to expire")
    # When new entries are written into the same indexes (across several rounds of expiry)
    for rnd in range(3):
        for i in range(20):
            cache.put(f"t#a#/new{rnd}-{i}#K#e", {"serviceName": "s"}, ttl=0.2 if rnd < 2 else 60)
        if rnd < 2:
            wait_for(lambda: cache.count() == 0, "a round to expire")
    # Then the indexes hold the live entries only (expired members are pruned on write, not kept forever)
    assert redis_client.hlen(f"{prefix}:ix:0:h:t#a") == 20
    for ix in ("x:t#a", "tas:t#a#s"):
        assert redis_client.zcard(f"{prefix}:ix:0:{ix}") == 20, ix
    # And an index whose members all expired disappears by itself
    cache.put("t#gone#/x#K#e", {"serviceName": "gone"}, ttl=0.2)
    wait_for(
        lambda: (
            not redis_client.exists(
                f"{prefix}:ix:0:h:t#gone", f"{prefix}:ix:0:x:t#gone", f"{prefix}:ix:0:tas:t#gone#gone"
            )
        ),
        "the indexes of an expired-only scope to expire",
    )
    assert cache.clear("t", "a") == 20


def test_stats_counters_move(cache: RouteAuthCache) -> None:
    cache.put(K1, 1)
    cache.get(K1)
    cache.get(K2)
    cache.get_or_load(K2, lambda k: 2)
    cache.clear("tenant-1", "app-1", event_id="ev-1")
    cache.clear("tenant-1", "app-1", event_id="ev-1")
    cache.delete(K1)
    cache.invalidate_all()
    s = cache.stats.snapshot()
    assert {k: s[k] for k in ("hits", "misses", "loads", "fills", "puts", "removed", "duplicates")} == {
        "hits": 1,
        "misses": 2,
        "loads": 1,
        "fills": 1,
        "puts": 1,
        "removed": 2,
        "duplicates": 1,
    }
    assert s["invalidations"] == {"clear": 1, "delete": 1, "invalidate_all": 1}
