"""The stand-in's STOMP 1.2 broker state, without I/O.

Every method takes a parsed frame (or a publish request) and returns an :class:`Outcome`: the bytes to send to
which session, and whether the session must close. ``messenger.server`` owns sockets, timers and threads and
applies outcomes; here we own sessions, subscriptions, message ids, acks and counters, so the protocol is
testable with literals. All calls come from one event-loop thread: no locks.

Semantics follow the STOMP 1.2 spec, and Spring's simple broker where it differs from a full broker:
destinations match exactly, a topic does not replay, NACK is recorded but nothing is redelivered.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from messenger.errors import StompProtocolError
from messenger.frames import StompFrame, encode_frame, negotiate_heartbeats, parse_heartbeat

ACK_MODES = ("auto", "client", "client-individual")
SECRET_HEADERS = ("authorization", "passcode")
AUTH_FAILED = "authentication failed"


@dataclass
class Subscription:
    session_id: str
    sub_id: str
    destination: str
    ack: str
    headers: dict[str, str]


@dataclass
class Session:
    session_id: str
    transport: str
    upgrade_authorized: bool
    connected: bool = False
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # negotiated heart-beats in ms: (we send every, we expect the client every); 0 = off
    heartbeat: tuple[int, int] = (0, 0)


@dataclass
class Outcome:
    send: list[tuple[str, bytes]] = field(default_factory=list)  # (session id, one encoded frame)
    close: bool = False  # close the session that sent the frame, after sending
    connected: Session | None = None  # set when a CONNECT succeeded (the server starts heart-beats)
    error: str | None = None  # the ERROR frame's message, when one was sent


def bearer_value(header: str | None) -> str | None:
    """``"Bearer abc"`` -> ``"abc"``; a bare value is taken as is (the original client sent both forms)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else header.strip()


class Broker:
    def __init__(
        self,
        *,
        token: str | None = None,
        heartbeat_ms: int = 10_000,
        server_name: str = "proxysync-messenger/1.0",
    ) -> None:
        self._token = token
        self._heartbeat_ms = heartbeat_ms
        self._server_name = server_name
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)
        self.acks: Counter[str] = Counter()
        self.nacks: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._pending: dict[str, tuple[str, str]] = {}  # ack id -> (session, subscription) awaiting ACK/NACK

    # -- sessions -------------------------------------------------------------------------------------------
    def open_session(self, *, transport: str, upgrade_authorization: str | None = None) -> Session:
        sid = f"s{next(self._ids)}-{self._prefix}"
        session = Session(
            sid, transport, upgrade_authorized=self._token_ok(bearer_value(upgrade_authorization))
        )
        self.sessions[sid] = session
        self.counters["sessions_opened"] += 1
        return session

    def close_session(self, session_id: str) -> None:
        if self.sessions.pop(session_id, None) is not None:
            self.counters["sessions_closed"] += 1
        self._pending = {k: v for k, v in self._pending.items() if v[0] != session_id}

    def _token_ok(self, presented: str | None) -> bool:
        if self._token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self._token.encode())

    # -- frames from a client -------------------------------------------------------------------------------
    def handle(self, session_id: str, frame: StompFrame) -> Outcome:
        """Apply one client frame. A protocol violation becomes ERROR + close, never an exception."""
        session = self.sessions[session_id]
        try:
            outcome = self._dispatch(session, frame)
        except StompProtocolError as exc:
            return self.error(session_id, str(exc))
        receipt = frame.headers.get("receipt")
        if receipt is not None and frame.command not in ("CONNECT", "STOMP"):
            outcome.send.append((session_id, encode_frame("RECEIPT", {"receipt-id": receipt})))
        return outcome

    def error(self, session_id: str, message: str, detail: str = "") -> Outcome:
        """ERROR then close (STOMP 1.2: the server MUST close the connection after an ERROR)."""
        self.counters["errors"] += 1
        body = detail or message
        frame = encode_frame("ERROR", {"message": message, "content-type": "text/plain"}, body)
        return Outcome(send=[(session_id, frame)], close=True, error=message)

    def _dispatch(self, session: Session, frame: StompFrame) -> Outcome:
        cmd = frame.command
        if cmd in ("CONNECT", "STOMP"):
            return self._connect(session, frame)
        if not session.connected:
            raise StompProtocolError(f"{cmd} before CONNECT")
        handler = {
            "SUBSCRIBE": self._subscribe,
            "UNSUBSCRIBE": self._unsubscribe,
            "SEND": self._send,
            "ACK": self._ack,
            "NACK": self._ack,
            "DISCONNECT": self._disconnect,
        }.get(cmd)
        if handler is None:  # BEGIN/COMMIT/ABORT: transactions are not needed by anyone using the stand-in
            raise StompProtocolError(f"{cmd} is not supported by this server")
        return handler(session, frame)

    def _connect(self, session: Session, frame: StompFrame) -> Outcome:
        if session.connected:
            raise StompProtocolError("already connected")
        versions = frame.headers.get("accept-version")
        if versions is not None and "1.2" not in versions.split(","):
            raise StompProtocolError("supported protocol versions are 1.2")
        presented = bearer_value(frame.headers.get("authorization")) or frame.headers.get("passcode")
        if not (session.upgrade_authorized or self._token_ok(presented)):
            self.counters["auth_failures"] += 1
            return self.error(session.session_id, AUTH_FAILED, "a valid bearer token is required")
        server_hb = (self._heartbeat_ms, self._heartbeat_ms)
        session.heartbeat = negotiate_heartbeats(server_hb, parse_heartbeat(frame.headers.get("heart-beat")))
        session.connected = True
        self.counters["connects"] += 1
        reply = encode_frame(
            "CONNECTED",
            {
                "version": "1.2",
                "heart-beat": f"{server_hb[0]},{server_hb[1]}",
                "server": self._server_name,
                "session": session.session_id,
            },
        )
        return Outcome(send=[(session.session_id, reply)], connected=session)

    def _subscribe(self, session: Session, frame: StompFrame) -> Outcome:
        destination, sub_id = _required(frame, "destination"), _required(frame, "id")
        ack = frame.headers.get("ack", "auto")
        if ack not in ACK_MODES:
            raise StompProtocolError(f"ack mode {ack!r} is not one of {', '.join(ACK_MODES)}")
        if sub_id in session.subscriptions:
            raise StompProtocolError(f"subscription id {sub_id!r} is already in use on this connection")
        headers = {k: self._redact(k, v) for k, v in frame.headers.items()}
        session.subscriptions[sub_id] = Subscription(session.session_id, sub_id, destination, ack, headers)
        self.counters["subscribes"] += 1
        return Outcome()

    def _unsubscribe(self, session: Session, frame: StompFrame) -> Outcome:
        if session.subscriptions.pop(_required(frame, "id"), None) is not None:
            self.counters["unsubscribes"] += 1
        return Outcome()

    def _send(self, session: Session, frame: StompFrame) -> Outcome:
        self.counters["sends"] += 1
        extra = {
            k: v
            for k, v in frame.headers.items()
            if k not in ("destination", "receipt", "content-length", "transaction", *SECRET_HEADERS)
        }
        return self.publish(_required(frame, "destination"), frame.body, extra)

    def _ack(self, session: Session, frame: StompFrame) -> Outcome:
        ack_id = _required(frame, "id")
        (self.acks if frame.command == "ACK" else self.nacks)[ack_id] += 1
        self._pending.pop(ack_id, None)
        return Outcome()

    def _disconnect(self, session: Session, frame: StompFrame) -> Outcome:
        session.connected = False
        return Outcome(close=True)  # the RECEIPT (if asked for) is appended by handle() before the close

    def _redact(self, key: str, value: str) -> str:
        """Subscription headers are shown by /admin/stats: never a secret, only whether it was valid."""
        if key.lower() not in SECRET_HEADERS:
            return value
        if self._token is None:
            return "<redacted>"
        return "<redacted:valid>" if self._token_ok(bearer_value(value)) else "<redacted:invalid>"

    # -- messages to subscribers ----------------------------------------------------------------------------
    def publish(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> Outcome:
        """A MESSAGE to every subscription of ``destination`` (exact match); ``len(send)`` = delivered."""
        out = Outcome()
        self.counters["published"] += 1
        base = {"content-type": "application/json"} | dict(headers or {})
        for session in self.sessions.values():
            if not session.connected:
                continue
            for sub in session.subscriptions.values():
                if sub.destination != destination:
                    continue
                message_id = f"m{next(self._ids)}-{self._prefix}"
                msg_headers = base | {
                    "destination": destination,
                    "message-id": message_id,
                    "subscription": sub.sub_id,
                }
                if sub.ack != "auto":  # STOMP 1.2 MESSAGE: an ack header when the subscription needs ACKs
                    msg_headers["ack"] = message_id
                    self._pending[message_id] = (session.session_id, sub.sub_id)
                out.send.append((session.session_id, encode_frame("MESSAGE", msg_headers, body)))
        self.counters["delivered"] += len(out.send)
        return out

    def stats(self) -> dict[str, Any]:
        subscriptions = [
            {
                "session": s.session_id,
                "id": sub.sub_id,
                "destination": sub.destination,
                "ack": sub.ack,
                "headers": sub.headers,
            }
            for s in self.sessions.values()
            for sub in s.subscriptions.values()
        ]
        return {
            "sessions": len(self.sessions),
            "session_list": [
                {
                    "id": s.session_id,
                    "transport": s.transport,
                    "connected": s.connected,
                    "heartbeat": list(s.heartbeat),
                }
                for s in self.sessions.values()
            ],
            "subscriptions": subscriptions,
            "acks": dict(self.acks),
            "nacks": dict(self.nacks),
            "pending_acks": len(self._pending),
            "connects": self.counters["connects"],
            "auth_failures": self.counters["auth_failures"],
            "counters": dict(self.counters),
        }


def _required(frame: StompFrame, name: str) -> str:
    value = frame.headers.get(name)
    if value is None or value == "":
        raise StompProtocolError(f"{frame.command} frame needs a '{name}' header")
    return value
