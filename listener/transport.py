"""The only module of the listener that touches a socket: stomp.py's STOMP 1.2 over websocket-client.

stomp.py owns the STOMP session (CONNECT, SUBSCRIBE, ACK, heart-beats, frame parsing); this transport adds
what it lacks (DESIGN.md "Reaching the Messenger"):

* the WebSocket is opened at a URL we choose (SockJS-framed session, raw SockJS ``/websocket``, or
  plain), with the bearer token on the HTTP upgrade, TLS verified by default, and ``skip_utf8_validation``
  (wsaccel does the masking) so a 3 MB frame costs milliseconds, not hundreds of them;
* SockJS frames (``o``, ``h``, ``a[...]``, ``c[...]``) are unwrapped on the way in, wrapped on the way out;
* frames above ``max_frame`` are replaced by a headers-only MESSAGE (:func:`listener.frames.oversize_stub`);
* liveness independent of STOMP heart-beats (Spring's simple broker sends none): the socket read times out
  every ``tick``; after ``idle/2`` of silence we send a WebSocket ping, after ``1.5 * idle`` we give up.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import Any

import websocket
from stomp.connect import BaseConnection
from stomp.exception import NotConnectedException
from stomp.protocol import Protocol12
from stomp.transport import BaseTransport
from websocket._abnf import ABNF, frame_buffer

from listener import frames, urls
from listener.errors import AuthError, ConnectError
from proxysync import sockjs

log = logging.getLogger("listener.transport")
OP_TEXT, OP_CLOSE = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_CLOSE


def ssl_options(ca_bundle: Path | None) -> dict[str, Any]:
    """Verified TLS always (certificate and host name); a CA bundle replaces the system trust store."""
    opts: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED, "check_hostname": True}
    if ca_bundle is not None:
        opts["ca_certs"] = str(ca_bundle)
    return opts


def resolve_target(
    mode: str, base: str, *, token: str | None, ca_bundle: Path | None, timeout_s: float = 5.0
) -> urls.Target:
    """``auto``: ``GET {base}/info`` answers -> SockJS-framed session; 404 -> plain WebSocket at ``base``."""
    if mode != "auto":
        return urls.target_for(mode, base)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = urls.info_url(base)
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the operator's Messenger URL
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:  # noqa: S310
            info = json.loads(resp.read().decode("utf-8") or "{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return urls.target_for("websocket", base)
        if exc.code in (401, 403):
            raise AuthError(f"SockJS info {url} answered HTTP {exc.code}") from None
        raise ConnectError(f"SockJS info {url} answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ConnectError(f"SockJS info {url} failed: {exc}") from None
    if isinstance(info, dict) and info.get("websocket") is False:
        raise ConnectError(f"{url}: the SockJS endpoint has WebSocket disabled (only websocket is supported)")
    return urls.target_for("sockjs", base)


class BoundedFrameBuffer(frame_buffer):  # type: ignore[misc]
    """websocket-client's frame reader, except that a message longer than ``limit`` is never held in memory.

    Counted per *message* (RFC 6455 section 5.4: a message may be fragmented; control frames may be
    interleaved and do not count). Once a message exceeds ``limit``, the rest of its payload is read and
    thrown away as it arrives, keeping only the first ``keep`` bytes of a first fragment (where the STOMP
    headers are); when its final fragment has been read, :attr:`truncated` holds the message's real length
    (``None`` for a message read whole). Resumable across read timeouts like the original: all progress
    lives on ``self``. Server frames are unmasked (RFC 6455 section 5.1).
    """

    def __init__(self, recv_fn: Any, *, limit: int, keep: int = 64 * 1024) -> None:
        super().__init__(recv_fn, True)
        self.limit, self.keep = limit, keep
        self.truncated: int | None = None
        self._message = 0  # data bytes of the current message so far, this frame included once counted
        self._counted = False  # this frame's length is in _message (the read may resume after a timeout)
        self._head: bytes | None = None
        self._skip = 0

    def recv_frame(self) -> Any:
        with self.lock:
            if self.needs_header():
                self.recv_header()
            if self.needs_length():
                self.recv_length()
            fin, rsv1, rsv2, rsv3, opcode, has_mask, _ = self.header  # type: ignore[misc]
            length = int(self.length or 0)
            data_frame = opcode < ABNF.OPCODE_CLOSE
            if data_frame and not self._counted:
                self._message += length
                self._counted = True
            if data_frame and self._message > self.limit:
                if self._head is None:
                    first = self._message == length
                    self._head = self.recv_strict(min(self.keep, length)) if first else b""
                    self._skip = length - len(self._head)
                while self._skip > 0:
                    self._skip -= len(self.recv(min(1 << 16, self._skip)) or b"")
                frame = ABNF(fin, rsv1, rsv2, rsv3, opcode, has_mask, self._head)
                self._head = None
                self.clear()
                self._frame_done(frame)
                return frame
        frame = super().recv_frame()
        self._frame_done(frame)
        return frame

    def _frame_done(self, frame: Any) -> None:
        if frame.opcode >= ABNF.OPCODE_CLOSE:
            return  # control frames do not touch the message being assembled
        self._counted = False
        if frame.fin:
            self.truncated = self._message if self._message > self.limit else None
            self._message = 0


class MessengerTransport(BaseTransport):  # type: ignore[misc]
    """A stomp.py transport over one websocket-client socket (one instance per connection attempt)."""

    def __init__(
        self,
        target: urls.Target,
        *,
        header: list[str],
        sslopt: dict[str, Any],
        vhost: str | None,
        max_frame: int,
        idle_s: float,
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(auto_decode=False)
        self.target = target
        self.header, self.sslopt, self.max_frame = header, sslopt, max_frame
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self.tick_s = min(1.0, idle_s / 4) if idle_s > 0 else 1.0
        self.current_host_and_port = urls.host_and_port(target.url)
        self.vhost = vhost or self.current_host_and_port[0]
        self.ws: websocket.WebSocket | None = None
        self.last_rx = monotonic()
        self._last_ping = 0.0
        self._send_lock = threading.Lock()
        self.drop_reason: str | None = None
        self.oversize = 0
        self.frames: BoundedFrameBuffer | None = None
        self.on_unknown_frame: Callable[[str], None] | None = None

    # STOMP 1.2 section "Server Frames": all a server may send (stomp.py's heart-beat pseudo-frame besides).
    _SERVER_FRAMES = frozenset({"connected", "message", "receipt", "error", "heartbeat"})

    def process_frame(self, f: Any, frame_str: bytes) -> None:
        """stomp.py only logs a frame whose command no server sends; it is a refused frame here (counted)."""
        if str(f.cmd).lower() not in self._SERVER_FRAMES and self.on_unknown_frame is not None:
            self.on_unknown_frame(str(f.cmd))
        super().process_frame(f, frame_str)

    # --- connection ---

    def attempt_connection(self) -> None:
        self.connection_error = False
        try:
            ws = websocket.create_connection(
                self.target.url,
                timeout=self.connect_timeout_s,
                header=self.header,
                sslopt=self.sslopt,
                skip_utf8_validation=True,
                enable_multithread=True,
            )
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise AuthError(f"WebSocket upgrade refused with HTTP {exc.status_code}") from None
            raise ConnectError(f"WebSocket upgrade refused with HTTP {exc.status_code}") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectError(f"cannot open {self.target.url}: {exc}") from None
        self.frames = BoundedFrameBuffer(ws._recv, limit=2 * self.max_frame)
        ws.frame_buffer = self.frames
        try:
            if self.target.framing == "sockjs":
                self._expect_open(ws)
            ws.settimeout(self.tick_s)
        except ConnectError:
            ws.shutdown()  # type: ignore[no-untyped-call]
            raise
        self.ws = ws
        self.last_rx = monotonic()

    def _expect_open(self, ws: websocket.WebSocket) -> None:
        try:
            _, data = ws.recv_data()
            frame = sockjs.decode_server_frame(data.decode("utf-8"))
        except (OSError, websocket.WebSocketException, UnicodeDecodeError, sockjs.SockJSError) as exc:
            raise ConnectError(f"no SockJS open frame from {self.target.url}: {exc}") from None
        if frame.kind == "close":
            raise ConnectError(f"SockJS session closed at once: {frame.code} {frame.reason}")
        if frame.kind != "open":
            raise ConnectError(f"expected SockJS open frame, got {frame.kind}")

    def is_connected(self) -> bool:
        ws = self.ws
        return ws is not None and bool(ws.connected) and bool(BaseTransport.is_connected(self))

    def disconnect_socket(self) -> None:
        self.running = False
        self._close_ws()
        if not self.notified_on_disconnect:
            self.notify("disconnected")

    def cleanup(self) -> None:
        self._close_ws()

    def _close_ws(self) -> None:
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            if ws.connected:
                ws.send_close()
        except (OSError, websocket.WebSocketException):
            pass
        try:
            if ws.sock is not None:
                ws.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv()
        except OSError:
            pass
        ws.shutdown()  # type: ignore[no-untyped-call]

    # --- frames out ---

    def send(self, encoded_frame: bytes) -> None:
        ws = self.ws
        if ws is None:
            raise NotConnectedException()
        with self._send_lock:
            if self.target.framing == "sockjs":
                # SockJS: the client sends a JSON array of strings (SockJS protocol, "Framing").
                ws.send(sockjs.encode_client_messages([encoded_frame.decode("utf-8")]), OP_TEXT)
            else:
                ws.send(encoded_frame, OP_TEXT)

    # --- frames in ---

    def receive(self) -> bytes:  # noqa: PLR0911 - one exit per way a socket ends
        """The next chunk of STOMP bytes; ``b""`` means the connection is over (stomp.py then notifies)."""
        while self.running:
            ws = self.ws
            if ws is None:
                return b""
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if self._still_alive(ws):
                    continue
                return b""
            except (OSError, websocket.WebSocketException, AttributeError) as exc:
                if self.running and self.drop_reason is None:
                    self.drop_reason = f"connection lost: {exc or type(exc).__name__}"
                return b""
            self.last_rx = monotonic()
            if opcode == OP_CLOSE:
                self.drop_reason = self.drop_reason or "the Messenger closed the WebSocket"
                return b""
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                # ping (websocket-client answers it) / pong. Any traffic proves the peer alive, and a server
                # that counts its pongs as "data sent" (RabbitMQ) skips its STOMP heart-beat: tell stomp.py.
                self.notify("heartbeat")
                continue
            chunk = self._chunk(data)
            if chunk is None:
                return b""
            if chunk:
                return chunk
        return b""

    def _chunk(self, data: bytes) -> bytes | None:
        """One WebSocket message -> STOMP bytes for stomp.py (``None``: the SockJS session closed)."""
        truncated = self.frames.truncated if self.frames is not None else None
        sockjs_framed = self.target.framing == "sockjs"
        if truncated is not None:  # never fully read: refuse from its headers alone
            return self._refuse(frames.headers_of_truncated(data, sockjs_framed), truncated)
        return self._unwrap(data) if sockjs_framed else self._guard(data)

    def _still_alive(self, ws: websocket.WebSocket) -> bool:
        if self.idle_s <= 0:
            return True
        now = monotonic()
        idle = now - self.last_rx
        if idle >= 1.5 * self.idle_s:
            self.drop_reason = (
                f"no data from the Messenger for {idle:.1f}s (read-idle limit {1.5 * self.idle_s:.1f}s)"
            )
            return False
        if idle >= self.idle_s / 2 and now - self._last_ping >= self.idle_s / 2:
            self._last_ping = now
            try:
                ws.ping()
            except (OSError, websocket.WebSocketException) as exc:
                self.drop_reason = f"ping failed: {exc}"
                return False
        return True

    def _guard(self, data: bytes) -> bytes:
        return self._refuse(data, len(data)) if len(data) > self.max_frame else data

    def _refuse(self, data: bytes, size: int) -> bytes:
        self.oversize += 1
        log.warning(
            "[WS-Client] refused a %d-byte frame (WEBSOCKET_CLIENT_MAX_FRAME=%d): "
            "it will be ACKed and counted, not dispatched",
            size,
            self.max_frame,
        )
        return frames.oversize_stub(data, size)

    def _unwrap(self, data: bytes) -> bytes | None:
        """SockJS frame -> STOMP bytes (``b""``: nothing for stomp.py; ``None``: the session is closed)."""
        try:
            frame = sockjs.decode_server_frame(data.decode("utf-8"))
        except (UnicodeDecodeError, sockjs.SockJSError) as exc:
            log.warning("[WS-Client] ignored a malformed SockJS frame (%d bytes): %s", len(data), exc)
            return b""
        if frame.kind == "close":
            self.drop_reason = f"SockJS close frame {frame.code} {frame.reason!r}"
            return None
        if frame.kind != "messages":
            self.notify("heartbeat")  # SockJS open / heartbeat: liveness only
            return b""
        return b"".join(self._guard(m.encode("utf-8")) for m in frame.messages)


class MessengerConnection(BaseConnection, Protocol12):  # type: ignore[misc]
    """``StompConnection12`` over :class:`MessengerTransport` (as stomp.py's ``WSStompConnection`` is
    built)."""

    def __init__(self, transport: MessengerTransport, *, heartbeats: tuple[int, int]) -> None:
        BaseConnection.__init__(self, transport)
        Protocol12.__init__(
            self, transport, heartbeats, auto_content_length=True, heart_beat_receive_scale=1.5
        )

    def connect(self, *args: Any, **kwargs: Any) -> None:
        self.transport.start()
        Protocol12.connect(self, *args, **kwargs)

    def disconnect(
        self, receipt: str | None = None, headers: dict[str, str] | None = None, **keyword_headers: Any
    ) -> None:
        # Protocol12 only (StompConnection12 would also wait, unbounded, for the receiver thread to end).
        Protocol12.disconnect(self, receipt, headers, **keyword_headers)
