"""``proxysync status``: one look at the whole pipeline, as a table or ``--json``.

Listener health (its ``/healthz`` and ``/readyz``), broker queue depths per proxysync queue, the workers
that consume those queues (Celery inspect with a short timeout, so a dead broker costs a second, not a
minute), dead-letter count, feed length and cache entry count. Every probe is independent: one that fails
reports its error and the rest still answer. Exits 1 when the pipeline cannot work (Redis down, listener
not ready, or no worker online), so scripts and healthchecks can use it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
import redis
from pydantic_settings import BaseSettings, SettingsConfigDict

from cache import CacheError, RouteAuthCache
from cache.names import DEFAULT_PREFIX, dead_stream, feed_stream
from proxysync import constants as C

# kombu's Redis transport keeps priority levels 3, 6 and 9 in sibling lists "{queue}\x06\x16{priority}".
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)


class StatusSettings(BaseSettings):
    """Where ``proxysync status`` looks, with defaults."""

    model_config = SettingsConfigDict(extra="ignore")

    listener_url: str = "http://127.0.0.1:8081"
    celery_broker_url: str = "redis://localhost:6379/0"
    cache_redis_url: str | None = None  # defaults to the broker's Redis
    cache_prefix: str = DEFAULT_PREFIX
    proxysync_queue_prefix: str = C.DEFAULT_QUEUE_PREFIX
    celery_broker_keyprefix: str = ""  # the Redis transport's global_keyprefix (celeryconfig)

    def cache_url(self) -> str:
        return C.cache_url(self.cache_redis_url, self.celery_broker_url)

    def queues(self) -> list[str]:
        return [C.queue_name(s, self.proxysync_queue_prefix) for s in (C.QUEUE_INVALIDATIONS, C.QUEUE_ROUTES)]


def redact(url: str) -> str:
    """The URL without its password (status output ends up in tickets)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _http(url: str, timeout: float) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-given http(s) URL
            return int(resp.status), resp.read(2000).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def listener_health(base: str, timeout: float) -> dict[str, Any]:
    base = base.rstrip("/")
    healthz, hbody = _http(f"{base}/healthz", timeout)
    readyz, rbody = _http(f"{base}/readyz", timeout)
    return {"url": base, "healthz": healthz, "readyz": readyz, "alive": healthz == 200,
            "ready": readyz == 200, "detail": rbody if readyz != 200 else None,
            "error": hbody if healthz is None else None}


def queue_depths(broker_url: str, queues: list[str], timeout: float, keyprefix: str = "") -> dict[str, Any]:
    """Messages waiting per queue: Redis LLEN of kombu's lists, or AMQP passive declare."""
    depths: dict[str, int | None] = {}
    try:
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            client = redis.Redis.from_url(broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                for q in queues:
                    names = [f"{keyprefix}{q}"] + [f"{keyprefix}{q}{REDIS_PRIORITY_SEP}{p}"
                                                   for p in REDIS_PRIORITY_STEPS]
                    depths[q] = sum(int(client.llen(n)) for n in names)  # type: ignore[arg-type,misc]
            finally:
                client.close()
        else:
            from kombu.connection import Connection

            with Connection(broker_url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
                conn.ensure_connection(max_retries=1)
                for q in queues:
                    try:
                        with conn.channel() as channel:
                            depths[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
                    except conn.channel_errors:
                        depths[q] = None  # not declared yet: no worker ever started on it
    except Exception as exc:  # reported, never raised: the other probes still answer
        return {"url": redact(broker_url), "queues": depths, "error": f"{type(exc).__name__}: {exc}"}
    return {"url": redact(broker_url), "queues": depths, "error": None}


def workers_online(broker_url: str, queues: list[str], timeout: float) -> dict[str, Any]:
    """Workers that answer inspect and consume at least one of our queues (others share the broker)."""
    try:
        from celery import Celery

        app = Celery("proxysync-status", set_as_current=False)
        app.config_from_object("celeryconfig")
        app.conf.broker_url = broker_url
        app.conf.broker_connection_retry_on_startup = False
        app.conf.broker_connection_max_retries = 1
        try:
            replies = app.control.inspect(timeout=timeout).active_queues() or {}
        finally:
            app.close()
    except Exception as exc:  # reported, never raised
        return {"online": [], "count": 0, "error": f"{type(exc).__name__}: {exc}"}
    ours = sorted(node for node, qs in replies.items() if {q.get("name") for q in qs or []} & set(queues))
    return {"online": ours, "count": len(ours), "others": len(replies) - len(ours), "error": None}


def cache_figures(url: str, prefix: str, timeout: float) -> dict[str, Any]:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return {"url": redact(url), "prefix": prefix,
                    "entries": RouteAuthCache(client, prefix=prefix).count(),
                    "feed_length": int(client.xlen(feed_stream(prefix))),  # type: ignore[arg-type]
                    "dead_letters": int(client.xlen(dead_stream(prefix))),  # type: ignore[arg-type]
                    "error": None}
        finally:
            client.close()
    except (redis.RedisError, CacheError, OSError) as exc:
        return {"url": redact(url), "prefix": prefix, "entries": None, "feed_length": None,
                "dead_letters": None, "error": f"{type(exc).__name__}: {exc}"}


def collect(settings: StatusSettings, *, timeout: float = 1.0) -> dict[str, Any]:
    queues = settings.queues()
    broker = queue_depths(settings.celery_broker_url, queues, timeout, settings.celery_broker_keyprefix)
    # Celery retries a control publish to an unreachable broker for seconds: don't ask when it is down.
    workers = (workers_online(settings.celery_broker_url, queues, timeout) if broker["error"] is None
               else {"online": [], "count": 0, "error": "broker unreachable"})
    report: dict[str, Any] = {
        "listener": listener_health(settings.listener_url, timeout),
        "broker": broker,
        "workers": workers,
        "cache": cache_figures(settings.cache_url(), settings.cache_prefix, timeout),
    }
    cache = report["cache"]
    report["dead_letters"] = cache["dead_letters"]
    report["feed_length"] = cache["feed_length"]
    report["cache_entries"] = cache["entries"]
    report["healthy"] = bool(report["listener"]["ready"] and report["workers"]["count"] > 0
                             and report["broker"]["error"] is None and cache["error"] is None)
    return report


def render(report: dict[str, Any]) -> str:
    lst, brk, wrk, cache = report["listener"], report["broker"], report["workers"], report["cache"]
    listener = ("ready" if lst["ready"] else "ALIVE, NOT READY" if lst["alive"] else "DOWN")
    rows = [
        ("listener", f"{listener}  {lst['url']}  (healthz {lst['healthz']}, readyz {lst['readyz']})"
                     + (f"  {lst['detail'] or lst['error']}" if not lst["ready"] else "")),
        ("broker", brk["url"] + (f"  ERROR {brk['error']}" if brk["error"] else "")),
    ]
    rows += [(f"  queue {q}", "not declared" if n is None else str(n)) for q, n in brk["queues"].items()]
    online = f": {', '.join(wrk['online'])}" if wrk["online"] else ""
    rows.append(("workers", f"{wrk['count']} online{online}"
                 + (f"  ERROR {wrk['error']}" if wrk["error"] else "")))
    rows.append(("cache", f"{cache['url']} prefix {cache['prefix']}" + (f"  ERROR {cache['error']}"
                                                                         if cache["error"] else "")))
    rows += [("  entries", str(cache["entries"])), ("  feed length", str(cache["feed_length"])),
             ("  dead letters", str(cache["dead_letters"]))]
    rows.append(("healthy", "yes" if report["healthy"] else "NO"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@click.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds each probe may take.")
def status(as_json: bool, timeout: float) -> None:
    """Listener health, queue depths, workers online, dead letters, feed length, cache entries.

    Reads LISTENER_URL (http://127.0.0.1:8081), CELERY_BROKER_URL (redis://localhost:6379/0),
    CACHE_REDIS_URL (the broker's Redis), CACHE_PREFIX (proxysync), PROXYSYNC_QUEUE_PREFIX (proxysync).
    Exits 1 when unhealthy.
    """
    report = collect(StatusSettings(), timeout=timeout)
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else render(report))
    sys.exit(0 if report["healthy"] else 1)
