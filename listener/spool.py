"""The disk spool: task calls the broker could not take yet, in arrival order, in one SQLite file.

The dispatcher ACKs a frame once its task is in the broker *or* in this spool (``synchronous=FULL``: the row
is on disk when ``push`` returns), and replays the spool oldest-first when the broker answers again and at
start-up. The spool is bounded: ``push`` refuses once ``max_items`` rows wait, and the caller logs loudly and
counts it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from proxysync.events import TaskCall

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    kwargs     TEXT NOT NULL,
    queue      TEXT NOT NULL,
    spooled_at REAL NOT NULL
)
"""


class Spool:
    """A FIFO of :class:`TaskCall` rows. Thread-safe; normally only the dispatcher thread uses it."""

    def __init__(self, path: Path | str, *, max_items: int = 100_000) -> None:
        self.path = Path(path)
        self.max_items = max_items
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._depth = self._count()

    def _count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
        return int(row[0])

    @property
    def depth(self) -> int:
        return self._depth

    def push(self, call: TaskCall) -> bool:
        """Append ``call``; ``False`` (nothing written) when the spool is full."""
        with self._lock:
            if self._depth >= self.max_items:
                return False
            self._db.execute(
                "INSERT INTO spool (name, task_id, kwargs, queue, spooled_at) VALUES (?, ?, ?, ?, ?)",
                (
                    call.name,
                    call.task_id,
                    json.dumps(call.kwargs, separators=(",", ":")),
                    call.queue,
                    time.time(),
                ),
            )
            self._depth += 1
            return True

    def peek(self, limit: int = 100) -> list[tuple[int, TaskCall]]:
        """The oldest ``limit`` rows, oldest first (they stay until :meth:`remove`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, name, task_id, kwargs, queue FROM spool ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [
            (int(seq), TaskCall(name=name, kwargs=json.loads(kwargs), task_id=task_id, queue=queue))
            for seq, name, task_id, kwargs, queue in rows
        ]

    def remove(self, seq: int) -> None:
        with self._lock:
            cur = self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            self._depth -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
