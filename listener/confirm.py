"""Delivery confirmation: a task the broker took but no worker ever started is sent again.

Celery's Redis transport is at-most-once in one window (celery/kombu#305, celery/celery#7950): a worker
pops a message with BRPOP and only afterwards records it as unacknowledged, so a worker killed (or a broker
that dies) in between loses it: it is in no queue, not unacked, never started, and nobody notices. A broker
restarted without persistence loses its queues the same way. Publisher confirms cannot see either loss, so the
listener closes the window end to end:

* every task it hands to the broker is remembered here (in memory, in send order);
* a worker marks each task it starts (``{prefix}:seen:{id}``, set in ``tasks.base``) and each event it
  applies (``{prefix}:done:{id}``) in the cache Redis; the listener asks for both, one pipelined round trip
  per batch;
* queues are FIFO, so a task still unstarted when a task sent *after* it on the same queue has started was
  overtaken: after ``grace`` seconds it is sent again with the same task id. With nothing sent after it, it
  is sent again once ``idle_after`` seconds passed *and* the broker says its queue is empty (a Redis broker:
  ``queue_depth``; without that evidence, as on AMQP, which has no such window, it waits to be overtaken).
  Re-sending is safe: the event id makes tasks idempotent.

While a backlog drains, nothing behind the oldest unstarted tasks has started either, so each round looks at
most ``scan_limit`` unconfirmed tasks per queue: the cost stays bounded however deep the backlog is. A task
re-sent ``max_attempts`` times without ever starting is given up with one loud log line and a counter.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cache.names import done_key, seen_key
from proxysync.events import TaskCall

log = logging.getLogger("listener.confirm")


class Pipeline(Protocol):
    def exists(self, *names: str) -> object: ...

    def execute(self) -> list[object]: ...


class RedisLike(Protocol):
    def pipeline(self, transaction: bool = ...) -> Pipeline: ...


@dataclass(slots=True)
class Pending:
    call: TaskCall
    seq: int
    sent_at: float
    attempts: int = 1
    overtaken_at: float | None = None


class Confirmations:
    """Tasks sent and not yet seen started or applied by a worker. Used by the dispatcher thread only."""

    def __init__(
        self,
        redis_client: RedisLike,
        *,
        prefix: str,
        grace: float = 10.0,
        idle_after: float | None = None,
        min_age: float = 1.0,
        max_attempts: int = 5,
        max_tracked: int = 200_000,
        scan_limit: int = 500,
        queue_depth: Callable[[str], int | None] | None = None,
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.grace = grace
        self.idle_after = idle_after if idle_after is not None else 6 * grace
        self.min_age = min_age
        self.max_attempts = max_attempts
        self.max_tracked = max_tracked
        self.scan_limit = scan_limit
        self.queue_depth = queue_depth  # messages waiting in a queue (by suffix), None when unknown
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._seq = itertools.count(1)
        self._newest_started: dict[str, int] = {}  # queue -> seq of the newest task seen started
        self._attempts: dict[str, int] = {}  # re-sent, not yet accepted by the broker again (maybe spooled)
        self._redis_ok = True
        self.resent = 0
        self.given_up = 0
        self.untracked = 0

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, call: TaskCall, now: float) -> None:
        """Remember a task the broker accepted (a re-send keeps its attempt count)."""
        old = self._pending.pop(call.task_id, None)
        attempts = old.attempts if old is not None else self._attempts.pop(call.task_id, 1)
        self._pending[call.task_id] = Pending(call, next(self._seq), now, attempts)
        if len(self._pending) > self.max_tracked:
            _, dropped = self._pending.popitem(last=False)
            self.untracked += 1
            if self.untracked & (self.untracked - 1) == 0:  # 1st, 2nd, 4th, 8th...: loud, never a flood
                log.warning(
                    "[WS-Client] %d tasks await confirmation (workers or the cache Redis away?): no longer "
                    "tracking the oldest, %s; %d untracked so far",
                    len(self._pending), dropped.call.task_id, self.untracked,
                )

    def due(self, now: float) -> list[TaskCall]:
        """Confirm what workers started; return the tasks to send again (their attempt counted)."""
        candidates = self._candidates(now)
        if not candidates:
            return []
        started = self._ask(candidates)
        if started is None:
            return []
        for p, ok in zip(candidates, started, strict=True):
            if ok:
                del self._pending[p.call.task_id]
                queue = p.call.queue
                self._newest_started[queue] = max(self._newest_started.get(queue, 0), p.seq)
        resend: list[TaskCall | None] = []
        for p, ok in zip(candidates, started, strict=True):
            if not ok and self._lost(p, now):
                resend.append(self._retry(p))
        return [c for c in resend if c is not None]

    # --- internals ---

    def _candidates(self, now: float) -> list[Pending]:
        per_queue: dict[str, int] = {}
        out: list[Pending] = []
        for p in self._pending.values():
            if now - p.sent_at < self.min_age:
                break  # send order: everything after is younger
            n = per_queue.get(p.call.queue, 0)
            if n >= self.scan_limit:
                continue
            per_queue[p.call.queue] = n + 1
            out.append(p)
        return out

    def _ask(self, candidates: list[Pending]) -> list[bool] | None:
        pipe = self.redis.pipeline(transaction=False)
        for p in candidates:
            pipe.exists(seen_key(self.prefix, p.call.task_id), done_key(self.prefix, p.call.task_id))
        try:
            replies = pipe.execute()
        except Exception as exc:  # the cache Redis is away: confirm later, never re-send blind
            if self._redis_ok:
                log.warning("[WS-Client] delivery confirmation paused: cache Redis unavailable (%s)", exc)
            self._redis_ok = False
            return None
        if not self._redis_ok:
            log.info("[WS-Client] delivery confirmation resumed: cache Redis answers again")
        self._redis_ok = True
        return [bool(r) for r in replies]

    def _lost(self, p: Pending, now: float) -> bool:
        if self._newest_started.get(p.call.queue, 0) > p.seq:
            if p.overtaken_at is None:
                p.overtaken_at = now
            return now - p.overtaken_at >= self.grace
        if now - p.sent_at < self.idle_after or self.queue_depth is None:
            return False
        return self.queue_depth(p.call.queue) == 0  # not waiting in its queue, never started: lost

    def _retry(self, p: Pending) -> TaskCall | None:
        del self._pending[p.call.task_id]  # tracked again once the broker (or the spool, then it) takes it
        if p.attempts >= self.max_attempts:
            self.given_up += 1
            log.error(
                "[WS-Client] task %s %s was sent %d times and no worker ever started it: giving up "
                "(are workers consuming queue %s?)",
                p.call.name, p.call.task_id, p.attempts, p.call.queue,
            )
            return None
        p.attempts += 1
        self._attempts[p.call.task_id] = p.attempts
        self.resent += 1
        log.warning(
            "[WS-Client] task %s %s never reached a worker (lost by the broker): sending it again "
            "(attempt %d)",
            p.call.name, p.call.task_id, p.attempts,
        )
        return p.call
