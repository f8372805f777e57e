"""RouteAuthCache: the shared route/auth cache on Redis, O(removed) scoped clears, stale-fill safety."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions as rex

from cache import scripts
from cache.errors import (
    CachePermanentError,
    CacheUnavailableError,
    InvalidValueError,
)
from cache.keys import CacheKey, validate_id
from cache.names import DEFAULT_PREFIX, Op, done_key, epoch_key, feed_stream

_TRANSIENT = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.BusyLoadingError,
    rex.ReadOnlyError,
    rex.TryAgainError,
    rex.ClusterDownError,
)
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS")


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py exceptions into the library's transient/permanent errors."""
    try:
        yield
    except rex.AuthenticationError as exc:  # a ConnectionError subclass, but retrying won't help
        raise CachePermanentError(f"{what}: Redis refused authentication ({exc})") from exc
    except _TRANSIENT as exc:
        raise CacheUnavailableError(f"{what}: Redis unavailable ({type(exc).__name__}: {exc})") from exc
    except rex.ResponseError as exc:
        if str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES:
            raise CacheUnavailableError(f"{what}: Redis busy ({exc})") from exc
        raise CachePermanentError(f"{what}: Redis error ({exc})") from exc
    except rex.RedisError as exc:
        raise CachePermanentError(f"{what}: Redis error ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True, slots=True)
class Applied:
    """What one invalidation did: entries removed, whether it was a duplicate, the feed entry id."""

    removed: int
    duplicate: bool
    feed_id: str | None


class CacheStats:
    """Thread-safe counters a caller can read (for metrics)."""

    _FIELDS = ("hits", "misses", "loads", "fills", "fills_refused", "puts", "removed", "duplicates")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._FIELDS, 0)
        self._invalidations: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def invalidated(self, op: str) -> None:
        with self._lock:
            self._invalidations[op] = self._invalidations.get(op, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "invalidations": dict(self._invalidations)}


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"value is not JSON-serialisable: {exc}") from exc


def service_of(value: object) -> str | None:
    """The service an entry belongs to when the value names one (``serviceName``), validated."""
    if isinstance(value, Mapping):
        name = value.get("serviceName")
        if name is not None:
            return validate_id(name, "serviceName of value")
    return None


class RouteAuthCache:
    """Route/auth entries shared by workers and gateway processes.

    * ``clear``/``clear_by_name`` walk a secondary index (O(entries removed); no SCAN, no glob from input).
    * ``invalidate_all`` bumps an epoch (O(1)); :meth:`reclaim` frees the old epoch's space in batches.
    * ``get_or_load`` never writes a value whose load began before an invalidation covering its key finished.
    * Every invalidation appends one entry to the feed stream, atomically, and with ``event_id`` runs once.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float | None = 3600.0,
        fill_window: float = 60.0,
        dedup_ttl: float = 7 * 24 * 3600.0,
        feed_maxlen: int = 100_000,
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl = ttl
        self.fill_window_ms = int(fill_window * 1000)
        self.dedup_ttl_ms = int(dedup_ttl * 1000)
        self.feed_maxlen = feed_maxlen
        self.stats = CacheStats()
        self._get = redis_client.register_script(scripts.GET)
        self._put = redis_client.register_script(scripts.PUT)
        self._fill = redis_client.register_script(scripts.FILL)
        self._apply = redis_client.register_script(scripts.APPLY)
        self._reclaim = redis_client.register_script(scripts.RECLAIM)
        self._count = redis_client.register_script(scripts.COUNT)

    # -- reads and writes ------------------------------------------------------------------------------------

    def _ttl_ms(self, ttl: float | None) -> int:
        chosen = self.ttl if ttl is None else ttl
        return max(int(chosen * 1000), 0) if chosen else 0

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None``."""
        CacheKey.parse(key)
        with redis_errors("get"):
            reply = self._get(args=[self.prefix, key])
        if reply[0] == 1:
            self.stats.add("hits")
            return json.loads(reply[1])
        self.stats.add("misses")
        return None

    def get_entry(self, key: str) -> tuple[Any, str | None] | None:
        """``(value, service it is indexed under)`` or ``None``: a near cache needs the service to follow
        ``clear_by_name`` exactly (``put(service=...)`` may differ from the value's ``serviceName``)."""
        CacheKey.parse(key)
        with redis_errors("get"):
            reply = self._get(args=[self.prefix, key])
        if reply[0] == 1:
            self.stats.add("hits")
            svc = reply[2].decode() if isinstance(reply[2], bytes) else reply[2]
            return json.loads(reply[1]), svc or None
        self.stats.add("misses")
        return None

    def put(self, key: str, value: Any, *, service: str | None = None, ttl: float | None = None) -> None:
        """Store ``value`` (authoritative: always written). ``ttl`` in seconds; 0 means no expiry."""
        parsed = CacheKey.parse(key)
        svc = validate_id(service, "service") if service is not None else service_of(value)
        body = _dumps(value)
        with redis_errors("put"):
            self._put(args=[self.prefix, key, parsed.tenant, f"{parsed.tenant}#{parsed.app}", body, svc or "",
                            self._ttl_ms(ttl)])
        self.stats.add("puts")

    def get_or_load(self, key: str, loader: Callable[[str], Any], *, ttl: float | None = None) -> Any:
        """Return the cached value or load it; the loaded value is cached only if nothing invalidated it
        since the load began."""
        parsed = CacheKey.parse(key)
        with redis_errors("get"):
            reply = self._get(args=[self.prefix, key])
        if reply[0] == 1:
            self.stats.add("hits")
            return json.loads(reply[1])
        self.stats.add("misses")
        _, epoch0, seq0, t0 = reply
        value = loader(key)
        self.stats.add("loads")
        if value is None:
            return None
        body = _dumps(value)
        svc = service_of(value) or ""
        with redis_errors("fill"):
            written = self._fill(args=[
                self.prefix, key, parsed.tenant, f"{parsed.tenant}#{parsed.app}", body, svc,
                self._ttl_ms(ttl), epoch0, seq0, t0, self.fill_window_ms,
            ])
        self.stats.add("fills" if written == 1 else "fills_refused")
        return value

    # -- invalidations ---------------------------------------------------------------------------------------

    def apply(
        self,
        op: Op | str,
        *,
        key: str | None = None,
        tenant_id: str | None = None,
        app_id: str | None = None,
        service_name: str | None = None,
        event_id: str | None = None,
        feed_fields: Mapping[str, str] | None = None,
    ) -> Applied:
        """Apply one change atomically with its feed entry; with ``event_id``, at most once per event."""
        op = Op(op)
        a = b = ""
        if op is Op.DELETE:
            CacheKey.parse(key)
            a = key or ""
        elif op is Op.CLEAR:
            a, b = validate_id(tenant_id, "tenant_id"), validate_id(app_id, "app_id")
        elif op is Op.CLEAR_SERVICE:
            a, b = validate_id(tenant_id, "tenant_id"), validate_id(service_name, "service_name")
        if event_id is not None:
            validate_id(event_id, "event_id")
        extra: list[str] = []
        for name, value in (feed_fields or {}).items():
            extra += [name, str(value)]
        with redis_errors(op.value):
            removed, feed_id = self._apply(args=[
                self.prefix, op.value, event_id or "", self.dedup_ttl_ms, self.feed_maxlen,
                self.fill_window_ms * 2 + 1000, a, b, *extra,
            ])
        if removed == -1:
            self.stats.add("duplicates")
            return Applied(0, True, None)
        self.stats.add("removed", removed)
        self.stats.invalidated(op.value)
        fid = feed_id.decode() if isinstance(feed_id, bytes) else feed_id
        return Applied(int(removed), False, fid)

    def delete(self, key: str, *, event_id: str | None = None) -> int:
        """Drop one key; returns 1 if it existed."""
        return self.apply(Op.DELETE, key=key, event_id=event_id).removed

    def clear(self, tenant_id: str, app_id: str, *, event_id: str | None = None) -> int:
        """Drop every entry of tenant+app; returns how many."""
        return self.apply(Op.CLEAR, tenant_id=tenant_id, app_id=app_id, event_id=event_id).removed

    def clear_by_name(self, tenant_id: str, service_name: str, *, event_id: str | None = None) -> int:
        """Drop every entry of tenant+service; returns how many."""
        return self.apply(Op.CLEAR_SERVICE, tenant_id=tenant_id, service_name=service_name,
                          event_id=event_id).removed

    def invalidate_all(self, *, event_id: str | None = None) -> int:
        """Drop everything in O(1) (epoch bump); returns how many entries that hid (read from a counter:
        entries that expired but were not yet pruned are included). See :meth:`reclaim`."""
        return self.apply(Op.INVALIDATE_ALL, event_id=event_id).removed

    # -- housekeeping ----------------------------------------------------------------------------------------

    def reclaim(self, *, batch: int = 2000, max_batches: int | None = None) -> int:
        """Free the space of entries hidden by ``invalidate_all``, one bounded batch per round trip
        (``batch`` structures, each a whole tenant+app scope or index, UNLINKed); returns entries freed."""
        freed = 0
        rounds = 0
        while max_batches is None or rounds < max_batches:
            with redis_errors("reclaim"):
                n, left = self._reclaim(args=[self.prefix, batch])
            freed += int(n)
            rounds += 1
            if left == 0:
                break
        return freed

    def pending_reclaim(self) -> int:
        with redis_errors("pending_reclaim"):
            return int(self.redis.scard(f"{self.prefix}:reclaim"))  # type: ignore[arg-type]

    def count(self) -> int:
        """Live entries (current epoch); O(tenant+app scopes): for status and tests, not hot paths."""
        with redis_errors("count"):
            return int(self._count(args=[self.prefix]))

    def epoch(self) -> int:
        with redis_errors("epoch"):
            return int(self.redis.get(epoch_key(self.prefix)) or 0)  # type: ignore[arg-type]

    def was_applied(self, event_id: str) -> bool:
        validate_id(event_id, "event_id")
        with redis_errors("was_applied"):
            return bool(self.redis.exists(done_key(self.prefix, event_id)))

    def feed_length(self) -> int:
        with redis_errors("feed_length"):
            return int(self.redis.xlen(feed_stream(self.prefix)))  # type: ignore[arg-type]
