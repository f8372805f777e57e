"""A tiny API gateway that answers routes through a NearCache following the invalidation feed.

    python examples/gateway.py --redis-url redis://localhost:6379/0 --prefix proxysync [--config routes.json]

``GET /route?key=tenant#app#path#KIND#env`` answers the route (local copy, else Redis, else the config
store), ``GET /local`` the keys held locally, ``GET /stats`` the near cache's counters, ``GET /metrics``
Prometheus text. The config store is a JSON object ``{key: route}`` (re-read on every load, so editing it and
publishing an invalidation shows the change); without ``--config`` a built-in sample is used. Every drop and
route refresh is printed, so the demo can show a change reaching the gateway.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from prometheus_client import CollectorRegistry, generate_latest

from cache import CacheUnavailableError, InvalidKeyError, NearCache, RouteAuthCache
from cache.feed import FeedEntry

SAMPLE_ROUTES: dict[str, Any] = {
    "tenant-123#app-456#/api/payment#CONFIG#production": {
        "upstream": "http://payments.internal:8080", "serviceName": "stripe_payment"},
    "tenant-123#app-456#/api/orders#CONFIG#production": {
        "upstream": "http://orders.internal:8080", "serviceName": "orders"},
    "tenant-123#app-789#/api/users#CONFIG#production": {
        "upstream": "http://users.internal:8080", "serviceName": "users"},
}


class ConfigStore:
    """The source of truth the loader reads: a JSON file (re-read each time) or a dict."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def routes(self) -> dict[str, Any]:
        if self.path is None:
            return SAMPLE_ROUTES
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def load(self, key: str) -> Any | None:
        return self.routes().get(key)


class Gateway:
    """The gateway's state: the near cache, its config store, and what the refresh callback saw."""

    def __init__(self, near: NearCache, store: ConfigStore) -> None:
        self.near = near
        self.store = store
        self.refreshes = 0
        self.routes_loaded = len(store.routes())
        self.metrics = CollectorRegistry()
        near.register_metrics(self.metrics)
        near.on_routes_refresh(self.reload_routes)
        near.on_drop(self.print_drop)

    def reload_routes(self, entry: FeedEntry) -> None:
        self.routes_loaded = len(self.store.routes())
        self.refreshes += 1
        why = f"gap {entry.extra['gap']}" if "gap" in entry.extra else f"feed entry {entry.id}"
        print(f"[{self.near.name}] routes refresh ({why}): reloaded {self.routes_loaded} routes", flush=True)

    def print_drop(self, op: str, keys: list[str], entry: FeedEntry | None) -> None:
        scope = "" if entry is None else " ".join(
            f"{k}={v}" for k, v in (("key", entry.key), ("tenant", entry.tenant_id), ("app", entry.app_id),
                                    ("service", entry.service_name)) if v and (k != "app" or not entry.key))
        print(f"[{self.near.name}] {op} {scope}: dropped {len(keys)} local {sorted(keys)}", flush=True)

    def route(self, key: str) -> tuple[int, dict[str, Any]]:
        local = key in self.near
        try:
            value = self.near.get_or_load(key, self.store.load)
        except InvalidKeyError as exc:
            return 400, {"error": str(exc)}
        except CacheUnavailableError as exc:
            return 503, {"error": str(exc)}
        if value is None:
            return 404, {"error": f"no route for {key}"}
        return 200, {"key": key, "route": value, "source": "local" if local else "shared"}


def make_handler(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/route":
                status, body = gateway.route(parse_qs(url.query).get("key", [""])[0])
                self._json(status, body)
            elif url.path == "/local":
                near = gateway.near
                self._json(200, {"keys": sorted(near.local_keys()), "following": near.following})
            elif url.path == "/stats":
                self._json(200, {**gateway.near.stats(), "refresh_callbacks": gateway.refreshes})
            elif url.path == "/metrics":
                self._send(200, generate_latest(gateway.metrics), "text/plain; version=0.0.4")
            else:
                self._json(404, {"error": "try /route?key=..., /local, /stats, /metrics"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the demo prints drops instead
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url", default="redis://localhost:6379/0")
    ap.add_argument("--prefix", default="proxysync")
    ap.add_argument("--config", type=Path, help="JSON file {key: route} (default: a built-in sample)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    ap.add_argument("--name", default="gateway")
    ap.add_argument("--local-ttl", type=float, default=30.0, help="seconds a local copy lives at most")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    client = redis.Redis.from_url(args.redis_url)
    near = NearCache(RouteAuthCache(client, prefix=args.prefix), ttl=args.local_ttl, name=args.name)
    gateway = Gateway(near, ConfigStore(args.config))
    server = ThreadingHTTPServer((args.host, args.port), make_handler(gateway))
    server.daemon_threads = True
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = "following" if near.following else "NOT following yet"
    port = server.server_address[1]
    print(f"[{args.name}] listening on http://{args.host}:{port} ({args.prefix}:feed: {state})", flush=True)
    stop.wait()
    server.shutdown()
    near.close()
    client.close()
    print(f"[{args.name}] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
