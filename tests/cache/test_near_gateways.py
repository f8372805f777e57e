"""Two gateway processes at once (examples/gateway.py), each with its own NearCache following the same feed.

Changes are produced with RouteAuthCache.apply (what a worker's task calls); each gateway reports its local
state over HTTP (``/local``, ``/stats``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from cache import Op, RouteAuthCache
from tests.cache.test_near_helpers import at_or_after, wait_until

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "t9#a9#/sentinel#CONFIG#prod"

K1, K2, K3 = "t1#a1#/p1#CONFIG#prod", "t1#a1#/p2#CONFIG#prod", "t1#a2#/p3#CONFIG#prod"
K4, K5, K6 = "t2#a1#/p4#CONFIG#prod", "t1#a2#/p5#CONFIG#prod", "t1#a3#/p6#CONFIG#prod"
ROUTES = {
    K1: {"upstream": "http://one", "serviceName": "s1"},
    K2: {"upstream": "http://two", "serviceName": "s2"},
    K3: {"upstream": "http://three", "serviceName": "s1"},
    K4: {"upstream": "http://four", "serviceName": "s1"},
    K5: {"upstream": "http://five"},
}
ALL = {K1, K2, K3, K4, K5, K6}


class GatewayProcess:
    def __init__(self, name: str, redis_url: str, prefix: str, config: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "gateway.py"), "--redis-url", redis_url,
             "--prefix", prefix, "--config", str(config), "--port", "0", "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        self.lines: list[str] = []
        first: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if not first:
                    first.append(line)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(20) or not first or "listening on http://" not in first[0]:
            self.stop()
            raise AssertionError(f"gateway {name} did not start: {self.lines}")
        self.base = first[0].split("listening on ", 1)[1].split()[0]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=5) as resp:
            return json.loads(resp.read())

    def route(self, key: str) -> Any:
        return self.get("/route?key=" + urllib.parse.quote(key))

    def local(self) -> set[str]:
        return set(self.get("/local")["keys"])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/stats")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def world(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RouteAuthCache, list[GatewayProcess]]]:
    prefix = f"pstest-near-gw-{uuid.uuid4().hex[:10]}"
    config = tmp_path_factory.mktemp("near") / "routes.json"
    config.write_text(json.dumps(ROUTES))
    client = redis.Redis.from_url(redis_url)
    gateways: list[GatewayProcess] = []
    try:
        gateways = [GatewayProcess(f"gw{i}", redis_url, prefix, config) for i in (1, 2)]
        yield RouteAuthCache(client, prefix=prefix), gateways
    finally:
        for gw in gateways:
            gw.stop()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()


def settle(cache: RouteAuthCache, gateways: list[GatewayProcess]) -> None:
    """Append a change that covers nothing local and wait until both gateways have applied it."""
    sentinel = cache.apply(Op.DELETE, key=SENTINEL).feed_id
    assert sentinel is not None
    for gw in gateways:
        wait_until(partial(reached, gw, sentinel), f"{gw.name} at {sentinel}")


def reached(gw: GatewayProcess, feed_id: str) -> bool:
    return at_or_after(gw.stats()["last_id"], feed_id)


def refreshes_are(gw: GatewayProcess, n: int) -> bool:
    return bool(gw.stats()["refresh_callbacks"] == n)


def fill_everything(cache: RouteAuthCache, gateways: list[GatewayProcess]) -> None:
    # K6 lives only in Redis, indexed under service s9 although its value names s1 (put's service wins)
    cache.put(K6, {"upstream": "http://six", "serviceName": "s1"}, service="s9")
    for gw in gateways:
        for key in sorted(ALL):
            assert gw.route(key)["key"] == key
        assert gw.local() == ALL


CASES = [
    pytest.param({"op": Op.DELETE, "key": K1}, {K1}, id="delete-key"),
    pytest.param({"op": Op.DELETE, "key": "t1#a1#/nothing#CONFIG#prod"}, set(), id="delete-absent-key"),
    pytest.param({"op": Op.CLEAR, "tenant_id": "t1", "app_id": "a1"}, {K1, K2}, id="clear-tenant-app"),
    pytest.param({"op": Op.CLEAR_SERVICE, "tenant_id": "t1", "service_name": "s1"}, {K1, K3},
                 id="clear-tenant-service"),
    pytest.param({"op": Op.CLEAR_SERVICE, "tenant_id": "t1", "service_name": "s9"}, {K6},
                 id="clear-service-named-by-put"),
    pytest.param({"op": Op.INVALIDATE_ALL}, ALL, id="invalidate-all"),
]


@pytest.mark.parametrize(("change", "dropped"), CASES)
def test_each_change_drops_exactly_its_entries_in_both_gateways(
    world: tuple[RouteAuthCache, list[GatewayProcess]], change: dict[str, Any], dropped: set[str]
) -> None:
    # Given two gateways holding every entry locally
    cache, gateways = world
    fill_everything(cache, gateways)
    # When a worker applies the change
    applied = cache.apply(**change)
    assert applied.feed_id is not None
    settle(cache, gateways)
    # Then each gateway dropped exactly the entries the change covers, and still serves the rest locally
    for gw in gateways:
        assert gw.local() == ALL - dropped, gw.name
        for key in sorted(ALL - dropped):
            assert gw.route(key)["source"] == "local"
        if dropped:
            assert any(f"dropped {len(dropped)} local" in line for line in gw.lines), gw.lines[-5:]


def test_route_refresh_callback_runs_once_per_feed_entry_in_both(
    world: tuple[RouteAuthCache, list[GatewayProcess]],
) -> None:
    cache, gateways = world
    settle(cache, gateways)
    before = [gw.stats()["refresh_callbacks"] for gw in gateways]
    # When three refresh entries are appended (one event delivered twice is applied, and announced, once)
    ev = f"refresh-{uuid.uuid4().hex[:8]}"
    assert not cache.apply(Op.ROUTES_REFRESH, event_id=ev).duplicate
    assert cache.apply(Op.ROUTES_REFRESH, event_id=ev).duplicate
    cache.apply(Op.ROUTES_REFRESH)
    cache.apply(Op.ROUTES_REFRESH)
    settle(cache, gateways)
    # Then each gateway's callback ran exactly three times (FIFO: a fourth proves no extra call is pending)
    for gw, n in zip(gateways, before, strict=True):
        wait_until(partial(refreshes_are, gw, n + 3), f"{gw.name}: 3 refreshes")
    cache.apply(Op.ROUTES_REFRESH)
    settle(cache, gateways)
    for gw, n in zip(gateways, before, strict=True):
        wait_until(partial(refreshes_are, gw, n + 4), f"{gw.name}: 4th refresh")
        assert sum("routes refresh (feed entry" in line for line in gw.lines) >= 4
