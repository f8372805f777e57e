"""The stand-in on a background thread: :class:`MessengerServer`, for tests and ``proxysync messenger``.

The routes and the protocol live in :mod:`messenger.app` (see its docstring for the URL layout); this module
only owns the listening socket, the event-loop thread and thread-safe calls into it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from messenger.app import SOCKJS_HEARTBEAT_S, MessengerApp
from messenger.broker import Broker
from messenger.frames import DEFAULT_MAX_FRAME
from proxysync.constants import DEFAULT_ENDPOINT

T = TypeVar("T")
__all__ = ["SOCKJS_HEARTBEAT_S", "MessengerApp", "MessengerServer"]


class MessengerServer:
    """The stand-in on a background thread (tests, ``proxysync up``): ``start()`` returns once listening."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        heartbeat_ms: int = 10_000,
        endpoint: str = DEFAULT_ENDPOINT,
        sockjs_heartbeat_s: float = SOCKJS_HEARTBEAT_S,
        max_frame: int = DEFAULT_MAX_FRAME,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # https/wss when given (to test clients' TLS verification)
        self.app = MessengerApp(
            Broker(token=token, heartbeat_ms=heartbeat_ms),
            endpoint=endpoint,
            sockjs_heartbeat_s=sockjs_heartbeat_s,
            max_frame=max_frame,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}/ws"

    @property
    def sockjs_url(self) -> str:
        return f"{self.url}{self.app.endpoint}"

    def start(self) -> MessengerServer:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="messenger", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._failure is not None:
            raise RuntimeError(f"messenger stand-in did not start: {self._failure!r}")
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app.build(), handle_signals=False, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock, ssl_context=self.ssl_context).start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self.app.drop_all()
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def __enter__(self) -> MessengerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the messenger stand-in is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def publish(self, destination: str, body: bytes | str, headers: dict[str, str] | None = None) -> int:
        """Broadcast a MESSAGE; returns the number of subscriptions it was delivered to."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        return self._call(self.app.publish(destination, data, headers))

    def drop_all(self) -> int:
        return self._call(_call_sync(self.app.drop_all))

    def stall(self, seconds: float) -> None:
        self._call(_call_sync(lambda: self.app.stall(seconds)))

    def stats(self) -> dict[str, Any]:
        stats = self._call(_call_sync(lambda: self.app.broker.stats() | {"stalled": self.app.stalled}))
        snapshot: dict[str, Any] = json.loads(json.dumps(stats))  # a copy the caller may keep
        return snapshot


async def _call_sync(fn: Callable[[], T]) -> T:
    return fn()
