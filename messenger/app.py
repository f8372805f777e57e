"""The stand-in's aiohttp application: every route on one port, each WebSocket session's lifecycle.

Routes (``{ep}`` = the SockJS endpoint base, default ``/messenger/websocket``)::

    GET  {ep}/info                          SockJS info document ("websocket": true)
    GET  {ep}/{server}/{session}/websocket  SockJS-framed WebSocket: o, h, a[...], c[...]
    GET  {ep}/websocket                     raw WebSocket (Spring's SockJS "raw" transport)
    GET  /ws                                plain STOMP over WebSocket (like RabbitMQ Web-STOMP)
    POST /publish?destination=/topic/x      body -> MESSAGE to every subscriber; {"delivered": n}
    POST /admin/drop                        abort every client connection (no close frame): tests reconnects
    POST /admin/stall?seconds=N             send nothing (no heart-beats, no pongs), read nothing, N s
    GET  /admin/stats                       sessions, subscriptions, acks/nacks per message-id, counters
    GET  /healthz

The STOMP state lives in :class:`messenger.broker.Broker` (no I/O); this module reads frames, applies
outcomes, runs heart-beat timers and the control API. Everything runs on one event loop: the broker needs no
locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from messenger.broker import Broker, Outcome, Session
from messenger.errors import StompProtocolError
from messenger.frames import DEFAULT_MAX_FRAME, HEARTBEAT, FrameParser
from proxysync.constants import DEFAULT_ENDPOINT
from proxysync.sockjs import (
    SockJSError,
    decode_client_messages,
    encode_close,
    encode_heartbeat,
    encode_messages,
    encode_open,
    info_document,
)

log = logging.getLogger("messenger")
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp", "stomp")
SOCKJS_HEARTBEAT_S = 25.0  # SockJS protocol: the server sends "h" after 25 s without other frames


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    session: Session
    sockjs: bool
    transport: asyncio.Transport | None
    last_rx: float
    last_tx: float  # any WebSocket message (SockJS "h" included)
    last_stomp_tx: float  # STOMP data, what STOMP heart-beats count
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MessengerApp:
    """The aiohttp application and every connection's lifecycle."""

    def __init__(
        self,
        broker: Broker,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        sockjs_heartbeat_s: float = SOCKJS_HEARTBEAT_S,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.broker = broker
        self.endpoint = "/" + endpoint.strip("/")
        self.sockjs_heartbeat_s = sockjs_heartbeat_s
        self.max_frame = max_frame
        self.conns: dict[str, _Connection] = {}
        self._stall_until = 0.0

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.max_frame + 1024 * 1024)
        ep = self.endpoint
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/publish", self._http_publish)
        app.router.add_post("/admin/drop", self._http_drop)
        app.router.add_post("/admin/stall", self._http_stall)
        app.router.add_get("/admin/stats", self._http_stats)
        app.router.add_get(ep, self._greeting)
        app.router.add_get(f"{ep}/info", self._info)
        app.router.add_get(f"{ep}/websocket", self._raw_ws)
        app.router.add_get(f"{ep}/{{server}}/{{session}}/websocket", self._sockjs_ws)
        app.router.add_get("/ws", self._plain_ws)
        return app

    # -- control API ----------------------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return asyncio.get_running_loop().time() < self._stall_until

    def stall(self, seconds: float) -> None:
        self._stall_until = asyncio.get_running_loop().time() + max(0.0, seconds)
        self.broker.counters["stalls"] += 1
        log.info("stalling every session for %.1f s (nothing sent, nothing read)", seconds)

    async def publish(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        if self.stalled:  # a frozen server delivers nothing; a topic does not replay
            log.info("publish to %s while stalled: dropped", destination)
            return 0
        outcome = self.broker.publish(destination, body, headers)
        await self._deliver(outcome.send)
        log.info(
            "published %d bytes to %s: delivered to %d subscription(s)",
            len(body),
            destination,
            len(outcome.send),
        )
        return len(outcome.send)

    def drop_all(self) -> int:
        """Abort every connection at the TCP level: no STOMP ERROR, no WebSocket close, no SockJS ``c``."""
        conns = list(self.conns.values())
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        self.broker.counters["drops"] += len(conns)
        log.info("dropped %d session(s)", len(conns))
        return len(conns)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(self.conns)})

    async def _http_publish(self, request: web.Request) -> web.Response:
        destination = request.query.get("destination")
        if not destination:
            return web.json_response({"error": "query parameter 'destination' is required"}, status=400)
        # curl -d and urllib label any body form-urlencoded: that is never what a publisher means here.
        given = request.query.get("content-type") or request.headers.get("Content-Type") or ""
        form = given.startswith("application/x-www-form-urlencoded")
        headers = {"content-type": "application/json" if form or not given else given}
        delivered = await self.publish(destination, await request.read(), headers)
        return web.json_response({"delivered": delivered})

    async def _http_drop(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": self.drop_all()})

    async def _http_stall(self, request: web.Request) -> web.Response:
        try:
            seconds = float(request.query.get("seconds", "10"))
        except ValueError:
            return web.json_response({"error": "seconds must be a number"}, status=400)
        self.stall(seconds)
        return web.json_response({"stalled_for": seconds})

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.broker.stats() | {"stalled": self.stalled})

    async def _greeting(self, request: web.Request) -> web.Response:
        return web.Response(text="Welcome to SockJS!\n")  # SockJS protocol: GET {base} greets

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            info_document(websocket=True), headers={"Cache-Control": "no-store, no-cache"}
        )

    # -- WebSocket sessions ---------------------------------------------------------------------------------
    async def _raw_ws(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve(request, "sockjs-raw")

    async def _sockjs_ws(self, request: web.Request) -> web.WebSocketResponse:
        server, session = request.match_info["server"], request.match_info["session"]
        if "." in server or "." in session:  # SockJS protocol: ids must not contain dots
            raise web.HTTPNotFound()
        return await self._serve(request, "sockjs")

    async def _plain_ws(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve(request, "websocket")

    async def _serve(self, request: web.Request, transport: str) -> web.WebSocketResponse:
        # autoping off: a stalled server must not answer pings either (a silent dead connection).
        ws = web.WebSocketResponse(
            autoping=False, protocols=STOMP_SUBPROTOCOLS, max_msg_size=2 * self.max_frame + 65536
        )
        tcp = request.transport if isinstance(request.transport, asyncio.Transport) else None
        await ws.prepare(request)
        session = self.broker.open_session(
            transport=transport, upgrade_authorization=request.headers.get("Authorization")
        )
        now = asyncio.get_running_loop().time()
        conn = _Connection(ws, session, transport == "sockjs", tcp, now, now, now)
        self.conns[session.session_id] = conn
        log.info("session %s opened (%s from %s)", session.session_id, transport, request.remote)
        ticker = asyncio.create_task(self._tick(conn))
        try:
            if conn.sockjs:
                await self._write(conn, encode_open())
            await self._read_loop(conn)
        finally:
            ticker.cancel()
            self.conns.pop(session.session_id, None)
            self.broker.close_session(session.session_id)
            with contextlib.suppress(Exception):
                await ws.close()
            log.info("session %s closed", session.session_id)
        return ws

    async def _read_loop(self, conn: _Connection) -> None:
        parser = FrameParser(max_frame=self.max_frame)
        sid = conn.session.session_id
        async for msg in conn.ws:
            await self._until_unstalled()
            conn.last_rx = asyncio.get_running_loop().time()
            if msg.type == WSMsgType.PING:
                with contextlib.suppress(Exception):
                    await conn.ws.pong(msg.data)
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                chunks = self._chunks(conn, msg.type, msg.data)
                for chunk in chunks:
                    for frame in parser.feed(chunk):
                        if frame is None:  # a heart-beat EOL: last_rx already moved
                            continue
                        if await self._apply(conn, self.broker.handle(sid, frame)):
                            return
            except (StompProtocolError, SockJSError) as exc:
                await self._apply(conn, self.broker.error(sid, str(exc)[:200]))
                return

    def _chunks(self, conn: _Connection, kind: WSMsgType, data: Any) -> list[bytes]:
        if conn.sockjs:
            if kind != WSMsgType.TEXT:
                raise SockJSError("SockJS sessions carry text messages only")
            return [m.encode("utf-8") for m in decode_client_messages(data)]
        return [data.encode("utf-8") if isinstance(data, str) else bytes(data)]

    async def _apply(self, conn: _Connection, outcome: Outcome) -> bool:
        """Send what the broker decided; True when this session is finished."""
        if outcome.connected is not None:
            send_ms, expect_ms = outcome.connected.heartbeat
            log.info(
                "session %s connected (heart-beat: send %d ms, expect %d ms)",
                conn.session.session_id,
                send_ms,
                expect_ms,
            )
        if outcome.error is not None:
            log.warning("session %s: %s: ERROR sent, closing", conn.session.session_id, outcome.error)
        await self._deliver(outcome.send)
        if outcome.close:
            await self._close(conn)
            return True
        return False

    async def _deliver(self, sends: list[tuple[str, bytes]]) -> None:
        """In order within a session (a MESSAGE before the RECEIPT after it), concurrently across sessions."""
        per_session: dict[str, list[bytes]] = {}
        for sid, data in sends:
            per_session.setdefault(sid, []).append(data)

        async def _in_order(conn: _Connection, frames: list[bytes]) -> None:
            for data in frames:
                await self._send_stomp(conn, data)

        await asyncio.gather(
            *(
                _in_order(conn, frames)
                for sid, frames in per_session.items()
                if (conn := self.conns.get(sid)) is not None
            )
        )

    async def _send_stomp(self, conn: _Connection, data: bytes) -> None:
        if self.stalled:
            return
        if conn.sockjs:
            # SockJS carries JSON strings: a body that is not UTF-8 cannot travel intact on this transport.
            await self._write(conn, encode_messages([data.decode("utf-8", errors="replace")]))
        else:
            try:
                await self._write(conn, data.decode("utf-8"))
            except UnicodeDecodeError:
                await self._write(conn, data)
        conn.last_stomp_tx = asyncio.get_running_loop().time()

    async def _write(self, conn: _Connection, data: str | bytes) -> None:
        async with conn.lock:
            if conn.ws.closed or self.stalled:  # stalled: nothing at all leaves, not even SockJS "o"
                return
            try:
                if isinstance(data, str):
                    await conn.ws.send_str(data)
                else:
                    await conn.ws.send_bytes(data)
            except (ConnectionError, RuntimeError) as exc:
                log.info("session %s: send failed (%s)", conn.session.session_id, exc)
                return
        conn.last_tx = asyncio.get_running_loop().time()

    async def _close(self, conn: _Connection) -> None:
        if conn.sockjs and not self.stalled:
            await self._write(conn, encode_close(3000, "Go away!"))  # what Spring's SockJS session sends
        with contextlib.suppress(Exception):
            await conn.ws.close()

    async def _until_unstalled(self) -> None:
        loop = asyncio.get_running_loop()
        while (left := self._stall_until - loop.time()) > 0:
            await asyncio.sleep(left)

    async def _tick(self, conn: _Connection) -> None:
        """STOMP heart-beats (STOMP 1.2 "Heart-beating"), SockJS ``h`` frames, the client-silence check."""
        loop = asyncio.get_running_loop()
        while True:
            send_ms, expect_ms = conn.session.heartbeat
            periods = [p for p in (send_ms / 1000, expect_ms / 1000) if p > 0]
            if conn.sockjs:
                periods.append(self.sockjs_heartbeat_s)
            await asyncio.sleep(min(1.0, max(0.02, min(periods, default=1.0) / 4)))
            now = loop.time()
            if self.stalled:
                conn.last_rx = now  # judge the client's silence from the end of the stall
                continue
            if conn.session.connected and send_ms and now - conn.last_stomp_tx >= send_ms / 1000:
                await self._send_stomp(conn, HEARTBEAT)
            if conn.sockjs and now - conn.last_tx >= self.sockjs_heartbeat_s:
                await self._write(conn, encode_heartbeat())
            if expect_ms and now - conn.last_rx > 2 * expect_ms / 1000:
                log.warning(
                    "session %s: nothing from the client for %.1f s (heart-beat %d ms): closing",
                    conn.session.session_id,
                    now - conn.last_rx,
                    expect_ms,
                )
                await self._close(conn)
                return
