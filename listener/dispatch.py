"""Frame -> event -> task, on a thread of its own, so the STOMP receive thread never waits for the broker.

Spring closes a session whose client stops reading for 10 s, so the receive thread only enqueues. This thread
parses (``proxysync.events``), sends by name, and ACKs once the task is in the broker or in the disk spool.
Order is kept: while the spool holds anything, new tasks join its tail; the spool is replayed oldest-first
whenever the broker answers again. A bad frame is logged once with its reason, counted, ACKed, and never
becomes a task.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from listener.confirm import Confirmations
from listener.errors import BrokerUnavailable
from listener.frames import OVERSIZE_HEADER
from listener.metrics import Metrics
from listener.spool import Spool
from proxysync.events import EventError, TaskCall, parse_event, task_call

log = logging.getLogger("listener.dispatch")


class Sender(Protocol):
    def send(self, call: TaskCall) -> None: ...

    def reachable(self, timeout_s: float = 1.0) -> bool: ...


@dataclass(slots=True)
class Item:
    """One unit of work: a received frame (``body`` + ``headers``) or a ready task call (gap policy)."""

    received_at: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    call: TaskCall | None = None
    label: str = ""
    ack: Callable[[], None] | None = None


_STOP = Item(received_at=0.0, label="stop")


class Dispatcher:
    """Owns the spool and the sender; ``submit`` is non-blocking and safe from any thread."""

    def __init__(
        self,
        sender: Sender,
        spool: Spool,
        metrics: Metrics,
        *,
        broker_retry_s: float = 1.0,
        confirm: Confirmations | None = None,
    ) -> None:
        self.sender, self.spool, self.metrics = sender, spool, metrics
        self.confirm = confirm
        self._last_confirm = time.monotonic()
        self.broker_retry_s = broker_retry_s
        self.queue: queue.Queue[Item] = queue.Queue()
        self.broker_ok = True
        self._broker_down_until = 0.0
        self._last_probe = time.monotonic()
        self.probe_interval_s = 5.0
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self.metrics.spool_depth.set(spool.depth)

    # --- API used by other threads ---

    @property
    def alive(self) -> bool:
        """The thread is running (``False`` after a bug killed it: ``/healthz`` then fails)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="listener-dispatch", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        self._idle.clear()
        self.queue.put_nowait(item)

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Finish what was queued (sending or spooling it), then end; ``False`` if that took too long."""
        self.queue.put_nowait(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        return self._idle.wait(timeout_s)

    # --- the thread ---

    def _run(self) -> None:
        self._replay()
        while True:
            self._confirm_round()
            try:
                item = self.queue.get(timeout=self.broker_retry_s)
            except queue.Empty:
                self._idle.set()
                self._probe()
                continue
            if item is _STOP:
                self._replay()
                return
            try:
                self._handle(item)
            except Exception:  # a bug: say so loudly, keep the listener alive
                log.exception("[WS-Client] internal error while dispatching %s", item.label or "a frame")
            if self.queue.empty():
                self._idle.set()

    def _probe(self) -> None:
        """When idle: keep ``broker_ok`` honest for /readyz, and replay the spool once the broker answers."""
        now = time.monotonic()
        if now - self._last_probe < self.probe_interval_s and not self.spool.depth:
            return
        self._last_probe = now
        if now < self._broker_down_until:
            return
        ok = self.sender.reachable()
        if not ok:
            self._broker_down(BrokerUnavailable("no answer to a connection probe"))
            return
        self.broker_ok = True
        self._replay()

    def _handle(self, item: Item) -> None:
        if item.call is not None:
            self._deliver(item.call, item.label, item.received_at)
            return
        self.metrics.frames_received.inc()
        if OVERSIZE_HEADER in item.headers:
            self._reject(
                item, "oversize", f"frame of {item.headers[OVERSIZE_HEADER]} bytes exceeds the limit"
            )
            return
        try:
            event = parse_event(item.body)
        except EventError as exc:
            self._reject(item, exc.reason, str(exc))
            return
        call = task_call(event, received_at=item.received_at)
        p = event.payload
        scope = " ".join(
            f"{k}={v}"
            for k, v in (
                ("tenantId", p.tenantId),
                ("appId", p.appId),
                ("key", p.key),
                ("serviceName", p.serviceName),
            )
            if v is not None
        )
        if self._deliver(
            call, f"event {event.type.value} {scope} id={event.event_id}".replace("  ", " "), item.received_at
        ):
            self._ack(item)  # in the broker or on disk: safe to let the Messenger forget it

    def _reject(self, item: Item, reason: str, why: str) -> None:
        self.metrics.frames_rejected.labels(reason=reason).inc()
        log.warning(
            "[WS-Client] rejected frame message-id=%s (%s): %s; ACKed, no task sent",
            item.headers.get("message-id", "?"),
            reason,
            why,
        )
        self._ack(item)

    def _ack(self, item: Item) -> None:
        if item.ack is None:
            return
        try:
            item.ack()
        except Exception as exc:  # the session is gone: a topic will not redeliver; the task is safe anyway
            log.info(
                "[WS-Client] could not ACK message-id=%s (session closed: %s)",
                item.headers.get("message-id", "?"),
                exc,
            )

    def _deliver(self, call: TaskCall, label: str, received_at: float) -> bool:
        """Send, or spool; ``False`` only when the spool is full and the task is dropped (loudly)."""
        if self.spool.depth:
            self._replay()
        if not self.spool.depth and time.monotonic() >= self._broker_down_until:
            try:
                self.sender.send(call)
            except BrokerUnavailable as exc:
                self._broker_down(exc)
            else:
                self._sent(call, received_at)
                log.info("[WS-Client] %s -> %s (sent)", label, call.name)
                return True
        if self.spool.push(call):
            self.metrics.spooled.inc()
            self.metrics.spool_depth.set(self.spool.depth)
            log.info(
                "[WS-Client] %s -> %s (spooled: broker unavailable, %d waiting)",
                label,
                call.name,
                self.spool.depth,
            )
            return True
        self.metrics.frames_rejected.labels(reason="spool_full").inc()
        log.error(
            "[WS-Client] SPOOL FULL (%d tasks at %s): %s -> %s is DROPPED (not ACKed); the broker has "
            "been unreachable too long",
            self.spool.depth,
            self.spool.path,
            label,
            call.name,
        )
        return False

    def _confirm_round(self) -> None:
        """About once a second: confirm what workers started, send again what the broker lost."""
        if self.confirm is None:
            return
        now = time.monotonic()
        if now - self._last_confirm < 1.0:
            return
        self._last_confirm = now
        given_up = self.confirm.given_up
        for call in self.confirm.due(now):
            self.metrics.resent.inc()
            self._deliver(call, f"re-send {call.task_id}", time.time())
        self.metrics.unconfirmed.inc(self.confirm.given_up - given_up)
        self.metrics.awaiting.set(len(self.confirm))

    def _track(self, call: TaskCall) -> None:
        if self.confirm is not None:
            self.confirm.track(call, time.monotonic())

    def _sent(self, call: TaskCall, received_at: float) -> None:
        self._track(call)
        self.broker_ok = True
        self.metrics.frames_dispatched.labels(task=call.name).inc()
        self.metrics.dispatch_latency.observe(max(0.0, time.time() - received_at))

    def _broker_down(self, exc: BrokerUnavailable) -> None:
        if self.broker_ok:
            log.error(
                "[WS-Client] broker unavailable (%s): spooling to %s until it answers", exc, self.spool.path
            )
        self.broker_ok = False
        self._broker_down_until = time.monotonic() + self.broker_retry_s

    def _replay(self) -> None:
        """Send spooled tasks oldest-first; stop at the first failure (order is kept)."""
        if not self.spool.depth or time.monotonic() < self._broker_down_until:
            return
        replayed = 0
        while self.spool.depth:
            batch = self.spool.peek(100)
            for seq, call in batch:
                try:
                    self.sender.send(call)
                except BrokerUnavailable as exc:
                    self._broker_down(exc)
                    self.metrics.spool_depth.set(self.spool.depth)
                    return
                self.spool.remove(seq)
                self._track(call)
                replayed += 1
                self.broker_ok = True
                self.metrics.frames_dispatched.labels(task=call.name).inc()
            self.metrics.spool_depth.set(self.spool.depth)
        if replayed:
            log.info("[WS-Client] broker is back: replayed %d spooled task(s) in order", replayed)
