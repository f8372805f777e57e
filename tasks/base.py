"""The one base class every proxysync task uses: retry/ack policy, delivery counting, dead letters, metrics.

Policy (declared once; the values come from :class:`tasks.settings.WorkerSettings` when the app is built):

* retry only transient errors (``autoretry_for=TRANSIENT``: the cache Redis unreachable), exponential backoff
  (``retry_backoff`` * 2**n seconds, capped at ``retry_backoff_max``, full jitter), at most ``max_retries``
  retries;
* ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged only once its task has finished, and
  goes back to the queue when the process running it dies;
* every way of giving up is dead-lettered (:mod:`tasks.deadletter`), including a poison message: one whose
  deliveries keep dying with their worker process (counted per task id in Redis, ``TASK_MAX_DELIVERIES``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task

from cache import Applied, Op
from cache.errors import CacheError
from cache.names import F_EVENT_TIME, SEEN_TTL_S, seen_key
from cache.store import redis_errors
from tasks import deadletter
from tasks.errors import TRANSIENT, BadArgumentsError
from tasks.metrics import metrics
from tasks.runtime import Runtime
from tasks.settings import WorkerSettings

log = logging.getLogger(__name__)

DELIVERIES_TTL_S = 24 * 3600


def deliveries_key(prefix: str, task_id: str, retries: int) -> str:
    return f"{prefix}:deliveries:{task_id}:{retries}"


def policy(settings: WorkerSettings) -> dict[str, Any]:
    """The class attributes a task class gets from settings (applied by ``tasks.app.create_app``)."""
    return {
        "autoretry_for": TRANSIENT,
        "retry_backoff": settings.task_retry_backoff,
        "retry_backoff_max": settings.task_retry_backoff_max,
        "retry_jitter": settings.task_retry_jitter,
        "max_retries": settings.task_max_retries,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "typing": True,
    }


class ProxysyncTask(Task):  # type: ignore[misc]
    """Base of every ``proxysync.*`` task. ``create_app`` subclasses it per app with the policy filled in."""

    abstract = True
    autoretry_for = TRANSIENT
    acks_late = True
    reject_on_worker_lost = True
    retry_jitter = True

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.app.proxysync_runtime
        return rt

    # -- around the work -------------------------------------------------------------------------------------

    @contextmanager
    def delivery(self) -> Iterator[bool]:
        """Count this delivery; yield True when the message is poison (it never finished N times before).

        The counter is removed whenever the task body exits — success or exception — so it only grows across
        deliveries whose process died mid-task (``kill -9``, OOM, segfault).
        """
        rt = self.runtime
        self._flush_spool(rt)
        req = self.request
        key = deliveries_key(rt.prefix, str(req.id), int(req.retries or 0))
        with redis_errors("count delivery"):
            pipe = rt.redis.pipeline(transaction=False)  # one round trip; MULTI/EXEC buys nothing here
            pipe.incr(key)
            pipe.expire(key, DELIVERIES_TTL_S)
            # "a worker started it": the listener's delivery confirmation (see listener/confirm.py)
            pipe.set(seen_key(rt.prefix, str(req.id)), 1, ex=SEEN_TTL_S)
            n = int(pipe.execute()[0])
        try:
            poison = n > rt.settings.task_max_deliveries
            if poison:
                why = f"delivered {n} times without finishing (its worker process died each time)"
                self._dead("poison", why)
            yield poison
        finally:
            try:
                rt.redis.delete(key)
            except Exception:  # best effort; the key expires anyway
                log.debug("could not remove %s", key)

    def _flush_spool(self, rt: Runtime) -> None:
        spool = rt.settings.dead_spool()
        if deadletter.spooled(spool):
            deadletter.flush_spool(rt.redis, rt.prefix, spool)

    def apply_change(self, op: Op, *, event_id: str | None, event_time: float | None,
                     feed_fields: dict[str, str] | None = None, **scope: str) -> dict[str, Any]:
        """Count the delivery, then apply one change (see :meth:`apply_now`)."""
        event_time = check_time(event_time)
        with self.delivery() as poison:
            if poison:
                return {"dead": True}
            return self.apply_now(op, event_id=event_id, event_time=event_time, feed_fields=feed_fields,
                                  **scope)

    def apply_now(self, op: Op, *, event_id: str | None, event_time: float,
                  feed_fields: dict[str, str] | None = None, **scope: str) -> dict[str, Any]:
        """Apply one change through the cache library (atomic: dedup marker + change + feed entry)."""
        event_id = event_id or str(self.request.id)
        fields = {F_EVENT_TIME: repr(event_time), **(feed_fields or {})}
        applied = self.runtime.cache.apply(op, event_id=event_id, feed_fields=fields, **scope)
        self.observe(op, applied, event_time)
        log.info("%s %s event=%s removed=%d%s", self.name, _scope(scope), event_id, applied.removed,
                 " (duplicate: already applied)" if applied.duplicate else "")
        return {"removed": applied.removed, "duplicate": applied.duplicate, "feed_id": applied.feed_id}

    @staticmethod
    def observe(op: Op, applied: Applied, event_time: float) -> None:
        m = metrics()
        if applied.duplicate:
            m.duplicates.labels(op=op.value).inc()
            return
        m.invalidations.labels(op=op.value).inc()
        m.removed.labels(op=op.value).inc(applied.removed)
        m.latency.labels(op=op.value).observe(max(time.time() - event_time, 0.0))

    # -- outcomes --------------------------------------------------------------------------------------------

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics().retries.labels(task=self.name).inc()
        log.warning("%s[%s] retry %d/%d after transient error: %s", self.name, task_id,
                    int(self.request.retries or 0) + 1, self.max_retries, exc)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        reason = "exhausted" if isinstance(exc, TRANSIENT) else "permanent"
        # Also called in the worker's main process for a hard time limit, where self.request is empty.
        self._dead(reason, f"{type(exc).__name__}: {exc}", task_id=task_id, args=args, kwargs=kwargs)

    def _dead(self, reason: str, error: str, *, task_id: str | None = None, args: Any = None,
              kwargs: Any = None) -> None:
        req = self.request
        rt = self.runtime
        letter = deadletter.DeadLetter(
            task=self.name, task_id=str(task_id or req.id),
            kwargs=dict(kwargs if kwargs is not None else req.kwargs or {}),
            args=list(args if args is not None else req.args or []), reason=reason, error=error[:2000],
            attempts=int(req.retries or 0) + 1, queue=str((req.delivery_info or {}).get("routing_key") or ""),
            hostname=str(req.hostname or socket.gethostname()),
        )
        try:
            deadletter.record(rt.redis, rt.prefix, rt.settings.dead_spool(), letter)
        except CacheError:  # pragma: no cover - record() spools on cache errors itself
            log.exception("dead letter lost: %s", letter)
        metrics().dead_letters.labels(task=self.name, reason=reason).inc()


def check_time(event_time: object) -> float:
    """``event_time`` as epoch seconds (float); absent means now."""
    if event_time is None:
        return time.time()
    if isinstance(event_time, bool) or not isinstance(event_time, int | float):
        kind = type(event_time).__name__
        raise BadArgumentsError(f"event_time must be epoch seconds (a number), not {kind}")
    return float(event_time)


def _scope(scope: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in scope.items() if v is not None) or "(all)"
