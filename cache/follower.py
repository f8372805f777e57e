"""FeedFollower: one thread that follows the invalidation feed with blocking XREADs and detects gaps.

Why a raw connection of its own: a blocking ``XREAD`` must not hold one of the pool's connections nor be cut
by the pool's socket timeout, and every reconnect must be *seen* (redis-py's client retries hide them): a
reconnect is a gap, the feed may be lost (a restarted Redis, a fail-over to a replica that lacks entries).

Each round trip pipelines ``XINFO STREAM`` and ``XREAD BLOCK`` from the last id seen. The XINFO snapshot,
taken just before the read, tells whether anything after the last id is gone:

* ``entries-added`` - ``length`` > entries read (Redis >= 7.0; trimming does not move
  ``max-deleted-entry-id``), or ``max-deleted-entry-id`` > last id (``XDEL``): an entry we never read is gone;
  on Redis 6 the conservative test is "the first entry is newer than the last one we read";
* ``last-generated-id`` < last id, or the stream vanished: the stream was recreated;
* ``entries-added`` - entries read > ``max_lag_entries``, or a full batch whose newest entry was applied more
  than ``max_lag_seconds`` ago: we fell too far behind to catch up usefully.

Every gap makes the handler drop everything local and jump to the stream's tail (an explicit id, never
``$``, so nothing appended after the snapshot is skipped). A lost connection makes the handler drop
everything and stop serving local entries until the follower is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.exceptions as rex

from cache.feed import FeedEntry
from cache.names import Op, feed_stream

log = logging.getLogger(__name__)

_LOST = (rex.ConnectionError, rex.TimeoutError, OSError)


class FeedHandler(Protocol):
    """What the follower drives (the near cache)."""

    def feed_entries(self, entries: list[FeedEntry]) -> None: ...

    def feed_gap(self, kind: str | None, tail_id: str, *, serve: bool) -> None:
        """Drop everything local (``kind`` None: at start); serve local entries after it iff ``serve``."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The parts of ``XINFO STREAM`` the follower needs (``None`` where the server does not say)."""

    length: int
    last_generated_id: str
    first_entry_id: str | None
    max_deleted_id: str | None
    entries_added: int | None


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_xinfo(reply: Any) -> StreamInfo:
    """Parse an ``XINFO STREAM`` reply (RESP2 flat list or RESP3 map)."""
    if isinstance(reply, dict):
        info = {_s(k): v for k, v in reply.items()}
    else:
        info = {_s(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}
    first = info.get("first-entry")
    max_deleted = info.get("max-deleted-entry-id")
    added = info.get("entries-added")
    return StreamInfo(
        length=int(info.get("length", 0)),
        last_generated_id=_s(info.get("last-generated-id", "0-0")),
        first_entry_id=_s(first[0]) if first else None,
        max_deleted_id=_s(max_deleted) if max_deleted is not None else None,
        entries_added=int(added) if added is not None else None,
    )


def parse_xread(reply: Any) -> list[FeedEntry]:
    """Parse a raw ``XREAD`` reply for one stream (RESP2 list, RESP3 map, or nil on timeout)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [entries for _name, entries in reply]
    out: list[FeedEntry] = []
    for entries in streams:
        for eid, flat in entries:
            pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
            fields = dict(pairs)
            try:
                out.append(FeedEntry.from_stream(eid, fields))
            except (KeyError, ValueError):  # a change this version cannot scope: it may cover anything
                log.warning("feed entry %s is not understood (%r); treating it as invalidate_all", _s(eid),
                            {_s(k): _s(v) for k, v in fields.items()})
                out.append(FeedEntry(id=_s(eid), op=Op.INVALIDATE_ALL, extra={"not_understood": "1"}))
    return out


# Gap kinds (a metric label).
GAP_TRIMMED = "trimmed"
GAP_RESET = "stream_reset"
GAP_BEHIND = "behind"
GAP_RECONNECT = "reconnect"
GAP_LOST = "connection_lost"
GAP_ERROR = "follower_error"


def gap_reason(info: StreamInfo | None, last_id: str, *, read_any: bool, read: int) -> tuple[str, str] | None:
    """``(kind, why)`` entries after ``last_id`` may be lost, else ``None``.

    ``read_any``: ``last_id`` is an entry we read (not just a start position); ``read``: its ``entries-added``
    number (how many entries the stream had ever had when it was appended).
    """
    last = parse_id(last_id)
    if info is None:
        return (GAP_RESET, "the feed stream vanished") if last != (0, 0) else None
    if parse_id(info.last_generated_id) < last:
        return GAP_RESET, f"the feed stream was recreated (its last id {info.last_generated_id} < {last_id})"
    detail = None
    if info.entries_added is not None:
        gone = info.entries_added - info.length
        if gone > read:
            detail = f"{gone} entries removed, {read} read"
        elif info.max_deleted_id is not None and parse_id(info.max_deleted_id) > last:
            detail = f"max deleted {info.max_deleted_id}"
    elif info.length == 0 and parse_id(info.last_generated_id) > last:
        detail = f"the stream is empty, its last id {info.last_generated_id}"
    elif read_any and info.first_entry_id is not None and parse_id(info.first_entry_id) > last:
        detail = f"first entry {info.first_entry_id}"
    return (GAP_TRIMMED, f"the feed was trimmed past {last_id} ({detail})") if detail else None


class FeedFollower:
    """Follow ``{prefix}:feed`` on a thread of its own; start at the stream's current last id."""

    def __init__(
        self,
        client: redis.Redis,
        handler: FeedHandler,
        *,
        prefix: str,
        block_ms: int = 2000,
        batch: int = 500,
        max_lag_entries: int | None = 10_000,
        max_lag_seconds: float | None = 30.0,
        name: str = "near",
    ) -> None:
        self.client = client
        self.handler = handler
        self.stream = feed_stream(prefix)
        self.block_ms = block_ms
        self.batch = batch
        self.max_lag_entries = max_lag_entries
        self.max_lag_seconds = max_lag_seconds
        self.name = name
        self.last_id = "0-0"
        self.lag_entries = 0
        self.lag_seconds = 0.0
        self._read = 0  # entries-added number of last_id (when the server counts entries)
        self._read_any = False
        self._behind: tuple[str, str] | None = None
        self._conn: Any = None
        self._conn_id: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-follower-{name}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the follower has its start position (local entries are served from then on)."""
        return self._ready.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread: wake its blocking read with ``CLIENT UNBLOCK``; True if it ended in time."""
        self._stop.set()
        if self._conn_id is not None:
            try:
                self.client.client_unblock(self._conn_id)
            except rex.RedisError as exc:
                log.debug("feed follower %s: CLIENT UNBLOCK failed (%s); waiting for the read to time out",
                          self.name, exc)
        if self._thread.is_alive():
            self._thread.join(self.block_ms / 1000 + 5 if timeout is None else timeout)
        return not self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        outage: str | None = None
        first = True
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._connect()
                    self._resync(None if first else GAP_RECONNECT, serve=True)
                    if outage is not None:
                        log.warning("feed follower %s: Redis is back; following %s from %s",
                                    self.name, self.stream, self.last_id)
                    elif first:
                        log.info("feed follower %s: following %s from %s", self.name, self.stream,
                                 self.last_id)
                    first, outage, backoff = False, None, 0.1
                    self._ready.set()
                self._step()
            except _LOST as exc:
                self._drop_conn()
                if self._stop.is_set():
                    break
                if outage is None:  # say it once per outage, not once per attempt
                    outage = f"{type(exc).__name__}: {exc}"
                    log.warning("feed follower %s: lost Redis (%s); dropped everything local, the near cache "
                                "reads through until the feed is back", self.name, outage)
                    self.handler.feed_gap(GAP_LOST, self.last_id, serve=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # a bug: say so with a traceback, drop everything, start over
                log.exception("feed follower %s: unexpected error; dropping everything local and resyncing",
                              self.name)
                self._drop_conn()
                self.handler.feed_gap(GAP_ERROR, self.last_id, serve=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self._drop_conn()

    def _connect(self) -> None:
        pool = self.client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # the read blocks up to block_ms; a dead peer is noticed within 5 s after that
        kwargs["socket_timeout"] = self.block_ms / 1000 + 5
        kwargs["socket_connect_timeout"] = min(kwargs.get("socket_connect_timeout") or 5.0, 5.0)
        if "socket_keepalive" in kwargs:  # TCP only (a unix-socket connection has no such option)
            kwargs["socket_keepalive"] = True
        kwargs["client_name"] = f"proxysync-feed-follower-{self.name}"
        conn = pool.connection_class(**kwargs)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        self._conn_id = int(conn.read_response())
        self._conn = conn

    def _drop_conn(self) -> None:
        conn, self._conn, self._conn_id = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken socket: nothing to do about it
                conn.disconnect()

    def _xinfo(self) -> StreamInfo | None:
        self._conn.send_command("XINFO", "STREAM", self.stream)
        return self._read_xinfo()

    def _read_xinfo(self) -> StreamInfo | None:
        try:
            return parse_xinfo(self._conn.read_response(disconnect_on_error=False))
        except rex.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise

    def _resync(self, kind: str | None, *, serve: bool, info: StreamInfo | None = None,
                fetch: bool = True) -> None:
        """Jump to the stream's tail and drop everything local."""
        if fetch:
            info = self._xinfo()
        self.last_id = info.last_generated_id if info else "0-0"
        self._read = (info.entries_added or 0) if info else 0
        self._read_any = False
        self._behind = None
        self.lag_entries, self.lag_seconds = 0, 0.0
        self.handler.feed_gap(kind, self.last_id, serve=serve)

    def _step(self) -> None:
        conn = self._conn
        conn.send_packed_command(conn.pack_commands([
            ("XINFO", "STREAM", self.stream),
            ("XREAD", "COUNT", self.batch, "BLOCK", self.block_ms, "STREAMS", self.stream, self.last_id),
        ]))
        info = self._read_xinfo()
        entries = parse_xread(conn.read_response())
        gap = self._behind or gap_reason(info, self.last_id, read_any=self._read_any, read=self._read)
        if gap is None and info is not None and info.entries_added is not None and self.max_lag_entries:
            behind = info.entries_added - self._read
            if behind > self.max_lag_entries:
                gap = GAP_BEHIND, f"fell {behind} entries behind (bound {self.max_lag_entries})"
        if gap is not None:
            log.warning("feed follower %s: %s; dropped everything local, following from the tail", self.name,
                        gap[1])
            self._resync(gap[0], serve=True, info=info, fetch=False)
            return
        if not entries:
            self.lag_entries, self.lag_seconds = 0, 0.0
            return
        self.handler.feed_entries(entries)
        self.last_id = entries[-1].id
        self._read += len(entries)
        self._read_any = True
        newest = entries[-1].applied_at_ms
        self.lag_seconds = max(time.time() - newest / 1000, 0.0) if newest else 0.0
        added = info.entries_added if info is not None else None
        self.lag_entries = max(added - self._read, 0) if added is not None else 0
        if self.max_lag_seconds and self.lag_seconds > self.max_lag_seconds and len(entries) == self.batch:
            self._behind = GAP_BEHIND, f"fell {self.lag_seconds:.1f}s behind (bound {self.max_lag_seconds}s)"
