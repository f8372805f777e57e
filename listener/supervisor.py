"""The connection supervisor: exactly one live STOMP session, reconnects with backoff, the gap policy.

stomp.py does not reconnect after a drop; this thread does, driving
:class:`listener.states.ConnectionMachine`: open (token, ``/info`` probe, upgrade, CONNECT) -> SUBSCRIBE
(``ack: client-individual``) -> gap policy -> wait for a drop (socket closed, ERROR, heart-beat or read-idle
timeout) -> backoff (full jitter, reset after a stable session) -> again. An auth refusal drops the cached
token first. On stop: UNSUBSCRIBE, DISCONNECT with a receipt, close.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from time import monotonic
from typing import Any

from stomp.listener import ConnectionListener

from listener.auth import TokenSource
from listener.dispatch import Dispatcher, Item
from listener.errors import AuthError, ConnectError
from listener.frames import ack_id, looks_like_auth_error
from listener.metrics import Metrics
from listener.settings import ListenerSettings
from listener.states import Backoff, ConnectionMachine, Event, State
from listener.transport import MessengerConnection, MessengerTransport, resolve_target, ssl_options
from proxysync import constants as C
from proxysync.events import QUEUE_OF, TaskCall

log = logging.getLogger("listener.supervisor")


class Session(ConnectionListener):  # type: ignore[misc]
    """One STOMP session: stomp.py's callbacks (receive thread) turned into events the supervisor waits on."""

    def __init__(
        self, conn: MessengerConnection, transport: MessengerTransport, dispatcher: Dispatcher
    ) -> None:
        self.conn, self.transport, self.dispatcher = conn, transport, dispatcher
        self.connected = threading.Event()
        self.ended = threading.Event()  # ERROR before CONNECTED, or the session is gone
        self.receipt = threading.Event()
        self.error: str | None = None
        self.disconnect_receipt: str | None = None
        self.subscription: str | None = None

    # stomp.py callbacks (receive / heart-beat threads) ---
    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        body = (
            frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else str(frame.body or "")
        )
        self.error = " ".join(filter(None, [frame.headers.get("message", ""), body.strip()[:200]])) or "ERROR"
        self.ended.set()

    def on_message(self, frame: Any) -> None:
        headers = dict(frame.headers)
        self.dispatcher.submit(
            Item(
                received_at=time.time(),
                headers=headers,
                body=frame.body or b"",
                ack=lambda: self.ack(headers),
            )
        )

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == self.disconnect_receipt:
            self.receipt.set()

    def on_heartbeat_timeout(self) -> None:
        self.transport.drop_reason = self.transport.drop_reason or "STOMP heart-beat timeout"

    def on_disconnected(self) -> None:
        self.ended.set()

    # used by the dispatcher / supervisor ---
    def ack(self, headers: dict[str, str]) -> None:
        aid = ack_id(headers)
        if aid is not None:
            self.conn.ack(aid)

    def reason(self) -> str:
        if self.error:
            return f"STOMP ERROR: {self.error}"
        return self.transport.drop_reason or "connection closed"

    def close(self) -> None:
        self.transport.disconnect_socket()


class Supervisor:
    """Runs the connect/subscribe/reconnect loop on its own thread."""

    def __init__(
        self,
        settings: ListenerSettings,
        tokens: TokenSource,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        stable_s: float = 30.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.settings, self.tokens, self.dispatcher, self.metrics = settings, tokens, dispatcher, metrics
        self.machine = ConnectionMachine(on_change=self._on_change)
        self.backoff = Backoff(
            settings.retry_interval_ms / 1000, settings.retry_max_ms / 1000, stable_s=stable_s
        )
        # A peer that does not finish the handshake is as dead as a silent one: same 2x heart-beat budget.
        hb_s = settings.heartbeat_ms / 1000
        self.connect_timeout_s = connect_timeout_s or (min(10.0, max(2.0, 2 * hb_s)) if hb_s else 10.0)
        self.subscriptions = 0
        self.session: Session | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def alive(self) -> bool:
        """The thread is running (``False`` after a bug killed it: ``/healthz`` then fails)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="listener-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 8.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _on_change(self, old: State, event: Event, new: State) -> None:
        log.debug("[WS-Client] state %s --%s--> %s", old.value, event.value, new.value)
        self.metrics.connected.set(1 if new is State.SUBSCRIBED else 0)

    # --- the loop ---

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("[WS-Client] connection supervisor crashed (a bug): /healthz now fails")
            self.metrics.connected.set(0)
            raise

    def _loop(self) -> None:
        self.machine.handle(Event.START)
        while not self._stop.is_set():
            try:
                session = self._open()
            except AuthError as exc:
                self.metrics.auth_failures.inc()
                self.tokens.invalidate()
                self.machine.handle(Event.AUTH_FAILED)
                log.error(
                    "[WS-Client] Messenger refused the credentials (%s): new token on the next attempt", exc
                )
                if not self._pause():
                    return
                continue
            except ConnectError as exc:
                self.machine.handle(Event.FAILED)
                log.error("[WS-Client] Failed to connect to WebSocket server (%s). Retrying...", exc)
                if not self._pause():
                    return
                continue
            self.session = session
            if self._serve(session):
                return
            if not self._pause():
                return
        self.machine.handle(Event.STOP)

    def _serve(self, session: Session) -> bool:
        """Subscribe, run the gap policy, wait for the end. ``True`` when the listener is stopping."""
        self.machine.handle(Event.CONNECTED)
        framing = "SockJS-framed" if session.transport.target.framing == "sockjs" else "plain WebSocket"
        url = session.transport.target.url
        log.info("[WS-Client] Connected to WebSocket server: true (%s, %s)", url, framing)
        log.info("[WS-Client] STOMP session established.")
        started = monotonic()
        try:
            self._subscribe(session)
        except Exception as exc:  # the socket died between CONNECTED and SUBSCRIBE
            session.transport.drop_reason = session.transport.drop_reason or f"subscribe failed: {exc}"
        else:
            self.machine.handle(Event.SUBSCRIBED)
            self._gap_policy()
        while not session.ended.wait(0.2):
            if self._stop.is_set():
                self.machine.handle(Event.STOP)
                self._close_gracefully(session)
                self.machine.handle(Event.CLOSED)
                return True
        reason = session.reason()
        session.close()
        if self._stop.is_set():
            self.machine.handle(Event.DROPPED)
            self.machine.handle(Event.STOP)
            return True
        auth = session.error is not None and looks_like_auth_error(session.error)
        self.machine.handle(Event.AUTH_FAILED if auth else Event.DROPPED)
        if auth:
            self.metrics.auth_failures.inc()
            self.tokens.invalidate()
        self.backoff.session_ended(monotonic() - started)
        if auth:
            log.error(
                "[WS-Client] Messenger refused the credentials (%s): new token on the next attempt", reason
            )
        else:
            log.warning("[WS-Client] Transport error: %s", reason)
        return False

    def _pause(self) -> bool:
        """Sleep the backoff delay; ``False`` when asked to stop meanwhile."""
        delay = self.backoff.next_delay()
        log.info("[WS-Client] Attempting to reconnect in %.2fs...", delay)
        if self._stop.wait(delay):
            self.machine.handle(Event.STOP)
            return False
        self.machine.handle(Event.RETRY)
        return True

    def _open(self) -> Session:
        s = self.settings
        token = self.tokens.get()
        target = resolve_target(
            s.transport, s.url, token=token, ca_bundle=s.ca_bundle, timeout_s=self.connect_timeout_s
        )
        header = [f"Authorization: Bearer {token}"] if token else []
        transport = MessengerTransport(
            target,
            header=header,
            sslopt=ssl_options(s.ca_bundle),
            vhost=s.stomp_host,
            max_frame=s.max_frame,
            idle_s=s.heartbeat_ms / 1000,
            connect_timeout_s=self.connect_timeout_s,
        )
        transport.on_unknown_frame = self._unknown_frame
        conn = MessengerConnection(transport, heartbeats=(s.heartbeat_ms, s.heartbeat_ms))
        session = Session(conn, transport, self.dispatcher)
        conn.set_listener("proxysync", session)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            conn.connect(with_connect_command=True, headers=headers)
        except (AuthError, ConnectError):
            raise
        except Exception as exc:  # stomp.py / socket errors while sending CONNECT
            session.close()
            raise ConnectError(f"STOMP CONNECT failed: {exc}") from None
        deadline = monotonic() + self.connect_timeout_s
        while not session.connected.is_set() and not session.ended.is_set() and monotonic() < deadline:
            session.connected.wait(0.05)
        if session.connected.is_set() and not session.ended.is_set():
            return session
        session.close()
        if session.error and looks_like_auth_error(session.error):
            raise AuthError(f"STOMP ERROR: {session.error}")
        raise ConnectError(session.reason() if session.ended.is_set() else "no CONNECTED frame in time")

    def _unknown_frame(self, command: str) -> None:
        """A frame no STOMP server sends (called on stomp.py's receiver thread): refused, counted, logged."""
        self.metrics.frames_rejected.labels(reason="bad_frame").inc()
        log.warning(
            "[WS-Client] rejected frame (bad_frame): %r is no STOMP server command; ignored", command[:40]
        )

    def _subscribe(self, session: Session) -> None:
        self.subscriptions += 1
        if self.subscriptions > 1:
            self.metrics.reconnects.inc()
        session.subscription = f"proxysync-{self.subscriptions}"
        token = self.tokens.get()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        session.conn.subscribe(
            self.settings.destination, id=session.subscription, ack="client-individual", headers=headers
        )
        log.info("[WS-Client] Subscribed to topic: %s", self.settings.destination)

    def _gap_policy(self) -> None:
        if self.settings.gap_policy == "none":
            log.info("[WS-Client] gap policy none: events published while unsubscribed are not compensated")
            return
        gap_id = f"gap-{uuid.uuid4().hex}"
        now = time.time()
        for name, suffix in (
            (C.TASK_INVALIDATE_ALL, "invalidate_all"),
            (C.TASK_ROUTES_REFRESH, "routes_refresh"),
        ):
            event_id = f"{gap_id}:{suffix}"
            call = TaskCall(
                name=name,
                kwargs={"event_id": event_id, "event_time": now},
                task_id=event_id,
                queue=QUEUE_OF[name],
            )
            self.dispatcher.submit(Item(received_at=now, call=call, label=f"gap resync {gap_id}"))
        self.metrics.gap_resyncs.inc()
        log.info(
            "[WS-Client] gap policy resync %s: invalidate-all + routes refresh queued (events published "
            "while we were not subscribed are lost)",
            gap_id,
        )

    def _close_gracefully(self, session: Session, wait_s: float = 3.0) -> None:
        """UNSUBSCRIBE, DISCONNECT with a receipt (STOMP 1.2 "Graceful disconnect"), then close the socket.

        Some servers (RabbitMQ Web-STOMP) close the socket instead of answering the receipt: that ends the
        session just as cleanly, so either is awaited.
        """
        try:
            if session.subscription:
                session.conn.unsubscribe(id=session.subscription)
            session.disconnect_receipt = f"bye-{uuid.uuid4().hex[:12]}"
            session.conn.disconnect(receipt=session.disconnect_receipt)
            deadline = monotonic() + wait_s
            while not session.receipt.is_set() and not session.ended.is_set() and monotonic() < deadline:
                session.receipt.wait(0.05)
        except Exception as exc:
            log.info("[WS-Client] clean disconnect failed (%s): closing the socket", exc)
        how = (
            "DISCONNECT receipt received"
            if session.receipt.is_set()
            else "the Messenger closed the session after DISCONNECT"
            if session.ended.is_set()
            else f"no DISCONNECT receipt within {wait_s:.0f}s"
        )
        session.close()
        log.info("[WS-Client] Disconnected from the Messenger (%s)", how)
