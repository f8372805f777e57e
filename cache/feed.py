"""Reading the invalidation feed (the stream every applied change is appended to)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from cache.names import (
    DEFAULT_PREFIX,
    F_APP,
    F_APPLIED_AT,
    F_EVENT_ID,
    F_KEY,
    F_OP,
    F_REMOVED,
    F_SERVICE,
    F_TENANT,
    Op,
    feed_stream,
)
from cache.store import redis_errors


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One applied change as the feed records it."""

    id: str
    op: Op
    tenant_id: str | None = None
    app_id: str | None = None
    key: str | None = None
    service_name: str | None = None
    event_id: str | None = None
    applied_at_ms: int = 0
    removed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_stream(cls, entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> FeedEntry:
        f = {_s(k) or "": _s(v) or "" for k, v in fields.items()}
        known = {F_OP, F_TENANT, F_APP, F_KEY, F_SERVICE, F_EVENT_ID, F_APPLIED_AT, F_REMOVED}
        return cls(
            id=_s(entry_id) or "",
            op=Op(f[F_OP]),
            tenant_id=f.get(F_TENANT) or None,
            app_id=f.get(F_APP) or None,
            key=f.get(F_KEY) or None,
            service_name=f.get(F_SERVICE) or None,
            event_id=f.get(F_EVENT_ID) or None,
            applied_at_ms=int(f.get(F_APPLIED_AT) or 0),
            removed=int(f.get(F_REMOVED) or 0),
            extra={k: v for k, v in f.items() if k not in known},
        )


def read_feed(
    client: redis.Redis,
    *,
    prefix: str = DEFAULT_PREFIX,
    last_id: str = "0-0",
    count: int = 500,
    block_ms: int | None = None,
) -> list[FeedEntry]:
    """Entries after ``last_id`` (blocking up to ``block_ms`` when given)."""
    stream = feed_stream(prefix)
    with redis_errors("read_feed"):
        reply: list[Any] | None = client.xread({stream: last_id}, count=count, block=block_ms)  # type: ignore[assignment]
    out: list[FeedEntry] = []
    for _name, entries in reply or []:
        out.extend(FeedEntry.from_stream(eid, fields) for eid, fields in entries)
    return out
