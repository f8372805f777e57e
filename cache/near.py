"""NearCache: a gateway's in-process copy of hot RouteAuthCache entries, kept honest by the invalidation feed.

Celery runs each invalidation on one worker, so every gateway process learns of it from the
``{prefix}:feed`` stream: a :class:`~cache.follower.FeedFollower` thread reads it and drops exactly the local
entries each change covers (a key, tenant+app, tenant+service, everything). Local entries remember the service
Redis indexes them under, so ``clear_by_name`` drops exactly what it dropped in Redis.

Stale-fill protection, locally: a fill (``get``/``get_or_load``/``put`` storing a value locally) takes a
ticket (the change counter) before it reads Redis; the follower records, per scope, the counter of the last
change it applied while fills were in flight; the fill stores its value only if no change covering its key
came since its ticket. ``invalidate_all``, gaps and a lost connection raise a floor refusing older tickets.

Values are shared, not copied: treat what ``get`` returns as read-only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cache.feed import FeedEntry
from cache.follower import FeedFollower
from cache.keys import CacheKey
from cache.names import Op
from cache.store import RouteAuthCache, service_of

log = logging.getLogger(__name__)

RefreshCallback = Callable[[FeedEntry], object]
DropListener = Callable[[str, list[str], "FeedEntry | None"], object]

_GAP_OP = "gap"  # drop-counter label for everything dropped by a gap or a lost connection
_MAX_SCOPES = 50_000  # bound of the per-scope change tables (then: raise the floor, forget the tables)


@dataclass(slots=True)
class _Local:
    value: Any
    expires: float
    tenant: str
    app: str
    service: str | None


class NearCache:
    """A bounded LRU+TTL of RouteAuthCache entries, in front of it, following the invalidation feed.

    ``get``/``get_or_load``/``put`` go through it. It serves local entries only while its follower follows
    (from its start position, an explicit id, until a lost connection); otherwise it reads through.
    """

    def __init__(
        self,
        cache: RouteAuthCache,
        *,
        maxsize: int = 10_000,
        ttl: float | None = 30.0,
        name: str = "near",
        block_ms: int = 2000,
        batch: int = 500,
        max_lag_entries: int | None = 10_000,
        max_lag_seconds: float | None = 30.0,
        refresh_on_gap: bool = True,
        start: bool = True,
        ready_timeout: float = 5.0,
    ) -> None:
        self.cache = cache
        self.maxsize = maxsize
        self.ttl = ttl
        self.name = name
        self.refresh_on_gap = refresh_on_gap
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Local] = OrderedDict()
        self._by_ta: dict[tuple[str, str], set[str]] = {}
        self._by_ts: dict[tuple[str, str], set[str]] = {}
        self._serving = False
        self._seq = 0
        self._floor = 0
        self._inflight = 0
        self._inv_key: dict[str, int] = {}
        self._inv_ta: dict[tuple[str, str], int] = {}
        self._inv_ts: dict[tuple[str, str], int] = {}
        self._counts = dict.fromkeys(("hits", "misses", "fills", "fills_discarded", "evictions",
                                      "expirations", "refreshes", "refresh_errors"), 0)
        self._dropped: dict[str, int] = {}
        self._changes: dict[str, int] = {}
        self._gaps: dict[str, int] = {}
        self._refresh_callbacks: list[RefreshCallback] = []
        self._drop_listeners: list[DropListener] = []
        self._calls: queue.SimpleQueue[FeedEntry | None] = queue.SimpleQueue()
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"near-refresh-{name}", daemon=True)
        self.follower = FeedFollower(
            cache.redis, self, prefix=cache.prefix, block_ms=block_ms, batch=batch,
            max_lag_entries=max_lag_entries, max_lag_seconds=max_lag_seconds, name=name,
        )
        self._started = self._closed = False
        if start:
            self.start(ready_timeout=ready_timeout)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, *, ready_timeout: float = 5.0) -> bool:
        """Start the follower; True once it follows (until then every read goes through to Redis)."""
        if not self._started:
            self._started = True
            self._dispatcher.start()
            self.follower.start()
        return self.follower.wait_ready(ready_timeout)

    def close(self) -> None:
        """Stop the follower and the refresh dispatcher; drop everything local. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            if not self.follower.stop():
                log.warning("near cache %s: the feed follower did not stop in time", self.name)
            self._calls.put(None)
            self._dispatcher.join(5.0)
        with self._lock:
            self._serving = False
            self._drop_all()

    def __enter__(self) -> NearCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def following(self) -> bool:
        """True while local entries are served (the follower is following the feed)."""
        return self._serving

    # -- hooks -----------------------------------------------------------------------------------------------

    def on_routes_refresh(self, callback: RefreshCallback) -> RefreshCallback:
        """Call ``callback(entry)`` once per ``routes_refresh`` feed entry, on a thread of its own (a slow
        reload never delays invalidations). With ``refresh_on_gap``, also after a gap (the entry then has
        ``extra["gap"]``): a refresh may have been lost in it. Exceptions are logged and contained."""
        self._refresh_callbacks.append(callback)
        return callback

    def on_drop(self, listener: DropListener) -> DropListener:
        """Call ``listener(op, dropped_keys, entry)`` after each change (``entry`` None for a gap), on the
        follower thread: keep it quick. Exceptions are logged and contained."""
        self._drop_listeners.append(listener)
        return listener

    # -- reads and writes ------------------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The value under ``key``: local if present, else from Redis (kept locally if nothing covered it)."""
        value = self._local(key)
        if value is not None:
            return value
        ticket, stored = self._begin(), False
        try:
            found = self.cache.get_entry(key)
            if found is not None:
                self._finish(ticket, key, found[0], found[1])
                stored = True
                return found[0]
            return None
        finally:
            if not stored:
                self._abandon()

    def get_or_load(self, key: str, loader: Callable[[str], Any], *, ttl: float | None = None) -> Any:
        """Local value, else Redis's, else ``loader(key)`` (filled in Redis and here unless covered since)."""
        value = self._local(key)
        if value is not None:
            return value
        ticket, stored = self._begin(), False
        try:
            found = self.cache.get_entry(key)
            if found is not None:
                value, service = found
            else:
                loaded: list[Any] = []

                def load(k: str) -> Any:
                    loaded.append(loader(k))
                    return loaded[0]

                value = self.cache.get_or_load(key, load, ttl=ttl)
                # a value someone else filled meanwhile: its service is unknown here, so keep it out
                if value is None or not loaded:
                    return value
                service = service_of(value)
            self._finish(ticket, key, value, service)
            stored = True
            return value
        finally:
            if not stored:
                self._abandon()

    def put(self, key: str, value: Any, *, service: str | None = None, ttl: float | None = None) -> None:
        """Write through to Redis (authoritative); keep the value locally unless a change covered it since."""
        ticket, stored = self._begin(), False
        try:
            self.cache.put(key, value, service=service, ttl=ttl)
            self._finish(ticket, key, value, service if service is not None else service_of(value))
            stored = True
        finally:
            if not stored:
                self._abandon()

    def peek(self, key: str) -> Any | None:
        """The local value under ``key`` (expired or not), without touching Redis, LRU order or counters."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.value if entry is not None else None

    def local_keys(self) -> list[str]:
        """Keys held locally now (least recently used first)."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _local(self, key: str) -> Any | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key) if self._serving else None
            if entry is not None and entry.expires <= now:
                self._pop(key)
                self._counts["expirations"] += 1
                entry = None
            if entry is None:
                self._counts["misses"] += 1
                return None
            self._entries.move_to_end(key)
            self._counts["hits"] += 1
            return entry.value

    # -- the local stale-fill guard --------------------------------------------------------------------------

    def _begin(self) -> int:
        with self._lock:
            self._inflight += 1
            return self._seq

    def _abandon(self) -> None:
        with self._lock:
            self._end_fill()

    def _end_fill(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:  # no ticket left to compare with: forget the per-scope tables
            self._inv_key.clear()
            self._inv_ta.clear()
            self._inv_ts.clear()

    def _covered(self, ticket: int, key: str, k: CacheKey, service: str | None) -> bool:
        return (
            not self._serving
            or ticket < self._floor
            or self._inv_key.get(key, 0) > ticket
            or self._inv_ta.get((k.tenant, k.app), 0) > ticket
            or (service is not None and self._inv_ts.get((k.tenant, service), 0) > ticket)
        )

    def _finish(self, ticket: int, key: str, value: Any, service: str | None) -> None:
        k = CacheKey.parse(key)
        expires = time.monotonic() + self.ttl if self.ttl else float("inf")
        with self._lock:
            try:
                if self._covered(ticket, key, k, service):
                    self._counts["fills_discarded"] += 1
                    return
                self._pop(key)
                self._entries[key] = _Local(value, expires, k.tenant, k.app, service)
                self._by_ta.setdefault((k.tenant, k.app), set()).add(key)
                if service is not None:
                    self._by_ts.setdefault((k.tenant, service), set()).add(key)
                self._counts["fills"] += 1
                while len(self._entries) > self.maxsize:
                    self._pop(next(iter(self._entries)))
                    self._counts["evictions"] += 1
            finally:
                self._end_fill()

    def _mark(self, table: dict[Any, int], scope: Any) -> None:
        """Record a change for in-flight fills (nothing to record when none is in flight)."""
        self._seq += 1
        if self._inflight:
            table[scope] = self._seq
            if len(table) > _MAX_SCOPES:
                self._raise_floor()

    def _raise_floor(self) -> None:
        self._seq += 1
        self._floor = self._seq
        self._inv_key.clear()
        self._inv_ta.clear()
        self._inv_ts.clear()

    # -- local drops (under the lock) ------------------------------------------------------------------------

    def _pop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        ta = self._by_ta.get((entry.tenant, entry.app))
        if ta is not None:
            ta.discard(key)
            if not ta:
                del self._by_ta[(entry.tenant, entry.app)]
        if entry.service is not None:
            ts = self._by_ts.get((entry.tenant, entry.service))
            if ts is not None:
                ts.discard(key)
                if not ts:
                    del self._by_ts[(entry.tenant, entry.service)]
        return True

    def _drop_all(self) -> list[str]:
        keys = list(self._entries)
        self._entries.clear()
        self._by_ta.clear()
        self._by_ts.clear()
        self._raise_floor()
        return keys

    def _apply(self, entry: FeedEntry) -> list[str]:
        op, t = entry.op, entry.tenant_id or ""
        if op is Op.DELETE and entry.key:
            self._mark(self._inv_key, entry.key)
            return [entry.key] if self._pop(entry.key) else []
        if op is Op.CLEAR and entry.app_id:
            self._mark(self._inv_ta, (t, entry.app_id))
            keys = list(self._by_ta.get((t, entry.app_id), ()))
        elif op is Op.CLEAR_SERVICE and entry.service_name:
            self._mark(self._inv_ts, (t, entry.service_name))
            keys = list(self._by_ts.get((t, entry.service_name), ()))
        elif op is Op.ROUTES_REFRESH:
            return []
        else:  # invalidate_all, or a change this version cannot scope: everything
            return self._drop_all()
        for key in keys:
            self._pop(key)
        return keys

    # -- FeedHandler (called by the follower thread) ---------------------------------------------------------

    def feed_entries(self, entries: list[FeedEntry]) -> None:
        done: list[tuple[FeedEntry, list[str]]] = []
        with self._lock:
            for entry in entries:
                dropped = self._apply(entry)
                self._changes[entry.op.value] = self._changes.get(entry.op.value, 0) + 1
                if entry.op is not Op.ROUTES_REFRESH:
                    self._dropped[entry.op.value] = self._dropped.get(entry.op.value, 0) + len(dropped)
                done.append((entry, dropped))
        for entry, dropped in done:
            if entry.op is Op.ROUTES_REFRESH:
                self._calls.put(entry)
            else:
                self._tell(entry.op.value, dropped, entry)

    def feed_gap(self, kind: str | None, tail_id: str, *, serve: bool) -> None:
        with self._lock:
            dropped = self._drop_all()
            self._serving = serve
            if kind is not None:
                self._gaps[kind] = self._gaps.get(kind, 0) + 1
                self._dropped[_GAP_OP] = self._dropped.get(_GAP_OP, 0) + len(dropped)
        if kind is None:
            return
        self._tell(_GAP_OP, dropped, None)
        if serve and self.refresh_on_gap:
            self._calls.put(FeedEntry(id=tail_id, op=Op.ROUTES_REFRESH, extra={"gap": kind}))

    def _tell(self, op: str, dropped: list[str], entry: FeedEntry | None) -> None:
        for listener in self._drop_listeners:
            try:
                listener(op, dropped, entry)
            except Exception:
                log.exception("near cache %s: drop listener %r failed (contained)", self.name, listener)

    def _dispatch(self) -> None:
        while (entry := self._calls.get()) is not None:
            for callback in self._refresh_callbacks:
                try:
                    callback(entry)
                    ok = True
                except Exception:
                    log.exception("near cache %s: route-refresh callback %r failed on feed entry %s "
                                  "(contained)", self.name, callback, entry.id)
                    ok = False
                with self._lock:
                    self._counts["refreshes" if ok else "refresh_errors"] += 1

    # -- metrics ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: hits/misses/fills, entries dropped and changes seen by op, gaps by kind, feed lag."""
        with self._lock:
            return {
                **self._counts,
                "entries": len(self._entries),
                "dropped": dict(self._dropped),
                "changes": dict(self._changes),
                "gaps": dict(self._gaps),
                "following": self._serving,
                "last_id": self.follower.last_id,
                "feed_lag_entries": self.follower.lag_entries,
                "feed_lag_seconds": self.follower.lag_seconds,
            }

    def register_metrics(self, registry: Any = None) -> NearCacheCollector:
        """Expose :meth:`stats` as Prometheus metrics (``prometheus_client``'s default registry if none)."""
        return NearCacheCollector(self).register(registry)


class NearCacheCollector:
    """A Prometheus collector reading one or more near caches' counters at scrape time (label ``cache``)."""

    def __init__(self, *caches: NearCache) -> None:
        self.caches = caches

    def register(self, registry: Any = None) -> NearCacheCollector:
        from prometheus_client import REGISTRY

        (registry or REGISTRY).register(self)
        return self

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = "proxysync_near"
        fams: dict[str, Any] = {
            "hits": CounterMetricFamily(f"{p}_hits", "Local hits", labels=["cache"]),
            "misses": CounterMetricFamily(f"{p}_misses", "Local misses", labels=["cache"]),
            "fills_discarded": CounterMetricFamily(
                f"{p}_fills_discarded", "Local fills refused: a change covered them", labels=["cache"]),
            "refresh_errors": CounterMetricFamily(
                f"{p}_refresh_errors", "Route-refresh callbacks that raised", labels=["cache"]),
            "entries": GaugeMetricFamily(f"{p}_entries", "Entries held locally", labels=["cache"]),
            "feed_lag_entries": GaugeMetricFamily(
                f"{p}_feed_lag_entries", "Feed entries not yet applied", labels=["cache"]),
            "feed_lag_seconds": GaugeMetricFamily(
                f"{p}_feed_lag_seconds", "Age of the newest feed entry when applied", labels=["cache"]),
        }
        dropped = CounterMetricFamily(f"{p}_dropped", "Local entries dropped, by op", labels=["cache", "op"])
        changes = CounterMetricFamily(f"{p}_changes", "Feed entries applied, by op", labels=["cache", "op"])
        gaps = CounterMetricFamily(f"{p}_gaps", "Feed gaps (everything dropped), by kind",
                                   labels=["cache", "kind"])
        for near in self.caches:
            s = near.stats()
            for field, fam in fams.items():
                fam.add_metric([near.name], float(s[field]))
            for fam, table in ((dropped, s["dropped"]), (changes, s["changes"]), (gaps, s["gaps"])):
                for label, n in table.items():
                    fam.add_metric([near.name, label], float(n))
        yield from (*fams.values(), dropped, changes, gaps)
