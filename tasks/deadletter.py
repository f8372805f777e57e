"""Dead letters: the ``{prefix}:dead`` stream, and a local spool for when that Redis is unreachable.

A task is dead-lettered when retrying cannot help (permanent error), when its retries are exhausted, or when
its message keeps killing worker processes (poison). The record holds everything needed to send it again by
name: task name, task id, arguments, plus why (reason, error), how many attempts and when.

The stream lives on the cache Redis — usually the very server whose outage exhausted the retries. So a letter
that cannot be written is spooled to a local directory (one JSON file each, written atomically) and flushed
into the stream by the next task that runs in any worker process on the host. Nothing is dropped silently:
spooling logs an ERROR with the whole record.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from cache.errors import CacheError
from cache.names import dead_stream
from cache.store import redis_errors

log = logging.getLogger(__name__)

DEAD_MAXLEN = 10_000
REASONS = ("permanent", "exhausted", "poison", "refused", "unknown")


@dataclass(frozen=True)
class DeadLetter:
    task: str
    task_id: str
    kwargs: dict[str, Any]
    reason: str
    error: str
    attempts: int
    failed_at: float = field(default_factory=time.time)
    args: list[Any] = field(default_factory=list)
    queue: str = ""
    hostname: str = ""
    id: str = ""  # the stream entry id, once recorded

    def fields(self) -> dict[str, str]:
        d = asdict(self)
        d.pop("id")
        d["kwargs"] = json.dumps(self.kwargs, sort_keys=True, default=str)
        d["args"] = json.dumps(self.args, default=str)
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_fields(cls, entry_id: str, f: Mapping[str, str]) -> DeadLetter:
        return cls(
            task=f.get("task", ""), task_id=f.get("task_id", ""), kwargs=json.loads(f.get("kwargs") or "{}"),
            reason=f.get("reason", ""), error=f.get("error", ""), attempts=int(f.get("attempts") or 0),
            failed_at=float(f.get("failed_at") or 0), args=json.loads(f.get("args") or "[]"),
            queue=f.get("queue", ""), hostname=f.get("hostname", ""), id=entry_id,
        )


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def write(client: redis.Redis, prefix: str, letter: DeadLetter) -> str:
    """Append to the dead stream; raises the cache library's errors."""
    with redis_errors("dead letter"):
        entry_id = client.xadd(dead_stream(prefix), letter.fields(), maxlen=DEAD_MAXLEN, approximate=True)  # type: ignore[arg-type]
    return _s(cast("bytes | str", entry_id))


def record(client: redis.Redis, prefix: str, spool: Path, letter: DeadLetter) -> str | None:
    """Write a dead letter, or spool it when the stream cannot be reached. Returns the id when written."""
    try:
        entry_id = write(client, prefix, letter)
    except CacheError as exc:
        path = _spool(spool, letter)
        log.error("dead letter for %s[%s] spooled to %s (dead stream unreachable: %s): %s",
                  letter.task, letter.task_id, path, exc, json.dumps(letter.fields()))
        return None
    log.error("dead letter %s: %s[%s] reason=%s attempts=%d error=%s", entry_id, letter.task, letter.task_id,
              letter.reason, letter.attempts, letter.error)
    return entry_id


def _spool(spool: Path, letter: DeadLetter) -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    final = spool / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    tmp = final.with_suffix(".tmp")
    tmp.write_text(json.dumps(letter.fields()))
    tmp.rename(final)  # atomic: a flusher never sees half a letter
    return final


def spooled(spool: Path) -> list[Path]:
    try:
        return sorted(p for p in spool.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []


def flush_spool(client: redis.Redis, prefix: str, spool: Path) -> int:
    """Move spooled letters into the stream; stops at the first failure (the rest wait for the next call)."""
    moved = 0
    for path in spooled(spool):
        claimed = path.with_suffix(f".claimed-{os.getpid()}")
        try:
            path.rename(claimed)  # one flusher per file, even with several pool processes
        except FileNotFoundError:
            continue
        fields = json.loads(claimed.read_text())
        try:
            write(client, prefix, DeadLetter.from_fields("", fields))
        except CacheError:
            claimed.rename(path)
            break
        claimed.unlink()
        moved += 1
    if moved:
        log.warning("flushed %d spooled dead letter(s) into %s", moved, dead_stream(prefix))
    return moved


def read(client: redis.Redis, prefix: str, *, count: int | None = None) -> list[DeadLetter]:
    with redis_errors("dead list"):
        rows = client.xrange(dead_stream(prefix), count=count)
    return [DeadLetter.from_fields(_s(eid), {_s(k): _s(v) for k, v in f.items()}) for eid, f in rows]  # type: ignore[union-attr]


def get(client: redis.Redis, prefix: str, entry_id: str) -> DeadLetter | None:
    with redis_errors("dead get"):
        rows = client.xrange(dead_stream(prefix), min=entry_id, max=entry_id)
    for eid, f in rows:  # type: ignore[union-attr]
        return DeadLetter.from_fields(_s(eid), {_s(k): _s(v) for k, v in f.items()})
    return None


def remove(client: redis.Redis, prefix: str, entry_id: str) -> int:
    with redis_errors("dead remove"):
        return int(client.xdel(dead_stream(prefix), entry_id))  # type: ignore[arg-type]

