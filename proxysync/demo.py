"""``proxysync up --demo``: seed the cache, publish one event of each type, show each effect.

The effect is read where a gateway would see it: the invalidation feed entry carrying the event's id
(which is also the Celery task id), plus the cache itself counted before and after. ``ALL_CACHE_INVALID``
goes last so the earlier events have something to remove.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from cache import CacheError, RouteAuthCache
from cache.feed import FeedEntry, read_feed
from cache.names import Op
from proxysync import constants as C
from proxysync.events import TASK_OF, EventType

if TYPE_CHECKING:
    from proxysync.stack import Stack

# (tenant, app, path, KIND, env, service): three tenants, six apps, nine services.
SEED: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("tenant-123", "app-456", "/api/payment", "CONFIG", "production", "stripe_payment"),
    ("tenant-123", "app-456", "/api/payment", "AUTH", "production", "stripe_payment"),
    ("tenant-123", "app-456", "/api/refund", "CONFIG", "production", "stripe_payment"),
    ("tenant-123", "app-456", "/api/refund", "ROUTE", "staging", "stripe_payment"),
    ("tenant-123", "app-456", "/api/invoice", "CONFIG", "production", "billing"),
    ("tenant-123", "app-789", "/api/users", "CONFIG", "production", "user_profile"),
    ("tenant-123", "app-789", "/api/users", "AUTH", "production", "user_profile"),
    ("tenant-123", "app-789", "/api/sessions", "AUTH", "production", "auth_gateway"),
    ("tenant-123", "app-789", "/api/payment", "CONFIG", "production", "stripe_payment"),
    ("tenant-200", "app-shop", "/api/cart", "CONFIG", "production", "cart"),
    ("tenant-200", "app-shop", "/api/checkout", "CONFIG", "production", "stripe_payment"),
    ("tenant-200", "app-shop", "/api/checkout", "AUTH", "production", "stripe_payment"),
    ("tenant-200", "app-shop", "/api/orders", "ROUTE", "production", "orders"),
    ("tenant-200", "app-admin", "/api/reports", "CONFIG", "production", "reporting"),
    ("tenant-200", "app-admin", "/api/payment", "CONFIG", "staging", "stripe_payment"),
    ("tenant-300", "app-mobile", "/api/feed", "ROUTE", "production", "feed"),
    ("tenant-300", "app-mobile", "/api/profile", "AUTH", "production", "user_profile"),
    ("tenant-300", "app-web", "/api/search", "CONFIG", "production", "search"),
)
DELETED_KEY = "tenant-123#app-789#/api/users#AUTH#production"


def seed_key(row: tuple[str, ...]) -> str:
    return "#".join(row[:5])


def seed_value(tenant: str, path: str, kind: str, env: str, service: str) -> dict[str, Any]:
    """What a gateway caches per kind: upstream config, auth policy or route."""
    upstream = f"http://{service.replace('_', '-')}.{tenant}.svc.cluster.local:8080{path}"
    if kind == "AUTH":
        return {"serviceName": service, "scheme": "oauth2", "audience": f"{tenant}/{service}",
                "scopes": [f"{service}:read", f"{service}:write"], "env": env}
    if kind == "ROUTE":
        return {"serviceName": service, "path": path, "methods": ["GET", "POST"], "upstream": upstream}
    return {"serviceName": service, "upstream": upstream, "timeoutMs": 3000, "retries": 2, "env": env}


@dataclass(frozen=True)
class DemoEvent:
    """One event to publish and the seeded keys it should remove."""

    type: EventType
    payload: dict[str, str]
    label: str
    in_scope: Callable[[tuple[str, ...]], bool] = field(repr=False)


EVENTS: tuple[DemoEvent, ...] = (
    DemoEvent(EventType.CACHE_CLEAR_INVALID, {"tenantId": "tenant-123", "appId": "app-456"},
              "tenant-123 / app-456", lambda r: r[0] == "tenant-123" and r[1] == "app-456"),
    DemoEvent(EventType.CACHE_DELETE_INVALID, {"key": DELETED_KEY}, DELETED_KEY,
              lambda r: seed_key(r) == DELETED_KEY),
    DemoEvent(EventType.CACHE_CLEAR_SERVICE_INVALID,
              {"tenantId": "tenant-200", "serviceName": "stripe_payment"},
              "tenant-200 / service stripe_payment",
              lambda r: r[0] == "tenant-200" and r[5] == "stripe_payment"),
    DemoEvent(EventType.ROUTES_REFRESH, {}, "every gateway reloads its routes", lambda r: False),
    DemoEvent(EventType.ALL_CACHE_INVALID, {}, "everything", lambda r: True),
)


class DemoFailed(Exception):
    """The stack stopped or a child gave up while the demo was waiting."""


def publish(messenger_url: str, topic: str, body: dict[str, Any], token: str | None) -> None:
    """POST the frame body to the stand-in's publish API (what ``proxysync publish`` does)."""
    if not messenger_url.startswith(("http://", "https://")):
        raise ValueError(f"the Messenger URL must be http(s)://, got {messenger_url!r}")
    dest = urllib.parse.quote(C.topic_destination(topic), safe="")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        f"{messenger_url}/publish?destination={dest}", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - our own http:// URL
        if not 200 <= int(resp.status) < 300:
            raise urllib.error.HTTPError(req.full_url, resp.status, "publish refused", resp.headers, None)


# Celery task event type -> the state it means (https://docs.celeryq.dev/en/stable/userguide/monitoring.html).
EVENT_STATES = {"task-received": "RECEIVED", "task-started": "STARTED", "task-succeeded": "SUCCESS",
                "task-failed": "FAILURE", "task-retried": "RETRY", "task-rejected": "REJECTED"}
FINAL_STATES = ("SUCCESS", "FAILURE", "REJECTED")


class TaskStates:
    """Follows the workers' task events (``worker -E``) in a thread: task id -> latest state."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.states: dict[str, str] = {}
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, name="demo-task-events", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        state = EVENT_STATES.get(str(event.get("type")))
        uid = event.get("uuid")
        if state and isinstance(uid, str) and self.states.get(uid) not in FINAL_STATES:
            self.states[uid] = state

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception:  # noqa: S110 - the states are informative; the feed is the proof
            pass

    def start(self) -> TaskStates:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(2)

    def get(self, task_id: str) -> str | None:
        return self.states.get(task_id)


class Demo:
    def __init__(self, stack: Stack, *, event_timeout: float, out: Callable[[str], None]) -> None:
        self.stack = stack
        self.timeout = event_timeout
        self.out = out
        self.client = redis.Redis.from_url(stack.cache_url)
        self.prefix = stack.settings.cache_prefix
        self.cache = RouteAuthCache(self.client, prefix=self.prefix, ttl=3600.0)
        self.states = TaskStates(stack.celery_app()).start()

    def tick(self, delay: float = 0.0) -> None:
        self.stack.supervise()
        if self.stack.failed:
            raise DemoFailed(self.stack.failed)
        if self.stack.stop.wait(delay):
            raise DemoFailed("stopped")

    def find(self, cursor: str, deadline: float, match: Callable[[FeedEntry], bool]) -> FeedEntry | None:
        """The first feed entry after ``cursor`` that matches, waiting until ``deadline``."""
        while time.monotonic() < deadline:
            for entry in read_feed(self.client, prefix=self.prefix, last_id=cursor, count=200, block_ms=100):
                cursor = entry.id
                if match(entry):
                    return entry
            self.tick()
        return None

    def wait_startup_resync(self) -> None:
        """The listener's gap policy resyncs on its first subscription; let that land before seeding."""
        if self.stack.settings.websocket_client_gap_policy == "none":
            return
        # Both halves: a later refresh must be ours, and the invalidate_all must not wipe the seed.
        seen: dict[Op, str] = {}

        def both(e: FeedEntry) -> bool:
            if e.op in (Op.INVALIDATE_ALL, Op.ROUTES_REFRESH):
                seen.setdefault(e.op, e.id)
            return len(seen) == 2

        entry = self.find(f"{self.stack.started_ms}-0", time.monotonic() + min(self.timeout, 15.0), both)
        if entry is None:
            self.out(f"demo: start-up resync (gap policy) not seen complete: {seen}; seeding anyway")
        else:
            self.out("demo: listener start-up resync applied (gap policy 'resync': invalidate_all feed "
                     f"entry {seen[Op.INVALIDATE_ALL]}, routes_refresh {seen[Op.ROUTES_REFRESH]})")

    def seed(self) -> list[tuple[str, ...]]:
        for row in SEED:
            tenant, _app, path, kind, env, service = row
            self.cache.put(seed_key(row), seed_value(tenant, path, kind, env, service), service=service)
        tenants = {r[0] for r in SEED}
        apps = {(r[0], r[1]) for r in SEED}
        services = {r[5] for r in SEED}
        self.out(f"demo: seeded {len(SEED)} entries: {len(tenants)} tenants, {len(apps)} apps, "
                 f"{len(services)} services (cache now holds {self.cache.count()})")
        return list(SEED)

    def present(self, rows: Sequence[tuple[str, ...]]) -> int:
        return sum(1 for r in rows if self.cache.get(seed_key(r)) is not None)

    def task_state(self, task_id: str) -> str:
        """The task's Celery state as the worker's task events reported it (the tasks keep no results)."""
        deadline = time.monotonic() + 2.0  # task-succeeded is sent just after the feed entry is written
        while self.states.get(task_id) not in FINAL_STATES and time.monotonic() < deadline:
            self.tick(0.05)
        state = self.states.get(task_id)
        return f"{state} (worker task event)" if state else "applied (no task event seen)"

    def run_one(self, n: int, ev: DemoEvent) -> bool:
        scope = [r for r in SEED if ev.in_scope(r)]
        before_scope, before_total = self.present(scope), self.cache.count()
        event_id = f"demo-{self.stack.run_id}-{n}"
        body = {"payload": {"type": ev.type.value, **ev.payload, "eventId": event_id},
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "source": "proxysync-demo"}
        self.out(f"[{n}/{len(EVENTS)}] {ev.type.value:<28} {ev.label}  -> task {TASK_OF[ev.type]}")
        cursor = f"{int(time.time() * 1000) - 1}-0"
        t_pub = time.time()
        publish(self.stack.messenger_url, self.stack.settings.websocket_client_topic, body,
                self.stack.settings.messenger_token)
        self.out(f"      published  event_id={event_id} (the Celery task id) "
                 f"via {self.stack.messenger_url}/publish")
        # Refreshes are coalesced: any refresh applied after ours was published counts.
        want_op = ev.type is EventType.ROUTES_REFRESH
        entry = self.find(cursor, time.monotonic() + self.timeout,
                          lambda e: e.event_id == event_id or (want_op and e.op is Op.ROUTES_REFRESH))
        if entry is None and not self.cache.was_applied(event_id):
            self.out(f"      NOT APPLIED within {self.timeout:.0f}s: no feed entry for {event_id} "
                     f"(see {self.stack.run_dir}/listener.log and worker.log)")
            return False
        applied_ms = entry.applied_at_ms if entry is not None and entry.applied_at_ms else time.time() * 1000
        state = self.task_state(event_id)
        where = (f"feed entry {entry.id} (op={entry.op.value}, removed={entry.removed})" if entry is not None
                 else "dedup marker set")
        if entry is not None and entry.event_id != event_id:
            where += f", coalesced into refresh {entry.event_id}"
        self.out(f"      applied    task state {state}; {where}")
        self.out(f"      entries    in scope {before_scope} -> {self.present(scope)}, "
                 f"whole cache {before_total} -> {self.cache.count()}")
        self.out(f"      propagation {max(applied_ms - t_pub * 1000, 0):.0f} ms (publish -> applied)")
        self.out(f"      APPLIED {ev.type.value}")
        return True

    def run(self) -> bool:
        self.wait_startup_resync()
        self.seed()
        applied: list[str] = []
        for n, ev in enumerate(EVENTS, 1):
            if not self.run_one(n, ev):
                missing = [e.type.value for e in EVENTS if e.type.value not in applied]
                self.out(f"demo: FAILED: {ev.type.value} was not applied within {self.timeout:.0f}s; "
                         f"not shown applied: {', '.join(missing)}")
                return False
            applied.append(ev.type.value)
        self.out(f"demo: all {len(applied)} event types applied: {', '.join(applied)}")
        return True


def run_demo(stack: Stack, *, event_timeout: float, out: Callable[[str], None]) -> bool:
    """Run the demo on a ready stack; False (with the reason printed) when any event was not shown applied."""
    demo = Demo(stack, event_timeout=event_timeout, out=out)
    try:
        return demo.run()
    except DemoFailed as exc:
        out(f"demo: interrupted: {exc}")
        return False
    except (urllib.error.URLError, OSError, redis.RedisError, CacheError) as exc:
        out(f"demo: FAILED: {exc}")
        return False
    finally:
        demo.states.stop()
        demo.client.close()
