"""A threaded TCP proxy for fault injection: cut, delay, black-hole and refuse traffic, both directions.

Put it between a client and its server (the listener and the Messenger, a worker and its Redis) and flip its
knobs while traffic flows:

* :meth:`TcpProxy.cut` resets every open connection (RST on both sides, as a crashed middlebox would);
* :meth:`TcpProxy.set_delay` holds every chunk ``seconds`` before forwarding it (a slow or congested link);
* :meth:`TcpProxy.blackhole` stops forwarding without closing anything (packets vanish; TCP keeps the bytes,
  so they flow again once :meth:`TcpProxy.heal` is called, just as retransmissions would deliver them);
  new connections are accepted but not connected upstream until then;
* :meth:`TcpProxy.refuse` closes new connections at once (the server's port is "down").

Threads, not asyncio: the code under test runs in other processes, and a thread per direction keeps each knob
a plain flag that every pump checks at least every 50 ms.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_POLL_S = 0.05


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            if s is None:
                continue
            if reset:  # SO_LINGER 0: close() sends RST instead of FIN
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.close()


class TcpProxy:
    """Listens on ``127.0.0.1:port`` (free port by default) and forwards to ``target``."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(128)
        self.host, self.port = self._server.getsockname()[:2]
        self.accepted = 0  # connections accepted since start: counts the client's connect attempts
        self.delay_s = 0.0
        self._holes = threading.Event()  # set while black-holed
        self._refusing = threading.Event()
        self._stop = threading.Event()
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url_for(self, scheme: str, path: str = "") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    # --- knobs ---

    def cut(self) -> int:
        """Reset every open connection (both directions); new ones are still accepted. Returns how many."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close(reset=True)
        return len(pairs)

    def set_delay(self, seconds: float) -> None:
        self.delay_s = max(0.0, seconds)

    def blackhole(self) -> None:
        self._holes.set()

    def refuse(self, on: bool = True) -> None:
        if on:
            self._refusing.set()
        else:
            self._refusing.clear()

    def heal(self) -> None:
        """Back to a clean link: no black hole, no delay, no refusal."""
        self._holes.clear()
        self._refusing.clear()
        self.delay_s = 0.0

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # --- lifecycle ---

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        self._thread.join(5)
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- threads ---

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._server], [], [], _POLL_S)
                if not ready:
                    continue
                client, _addr = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            if self._refusing.is_set():
                _Pair(client).close(reset=True)
                continue
            pair = _Pair(client)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._open, args=(pair,), daemon=True, name="tcpproxy-conn").start()

    def _open(self, pair: _Pair) -> None:
        while self._holes.is_set() and not pair.closed.is_set():  # a black hole answers no SYN either
            time.sleep(_POLL_S)
        try:
            pair.upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(pair, reset=True)
            return
        if pair.closed.is_set():  # cut meanwhile
            with contextlib.suppress(OSError):
                pair.upstream.close()
            return
        for src, dst in ((pair.client, pair.upstream), (pair.upstream, pair.client)):
            threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True,
                             name="tcpproxy-pump").start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        while not pair.closed.is_set() and not self._stop.is_set():
            if self._holes.is_set():
                time.sleep(_POLL_S)  # read nothing: bytes wait in the kernel, as unacknowledged TCP would
                continue
            try:
                ready, _, _ = select.select([src], [], [], _POLL_S)
                if not ready:
                    continue
                data = src.recv(65536)
            except (OSError, ValueError):
                break
            if not data:
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            while self._holes.is_set() and not pair.closed.is_set():
                time.sleep(_POLL_S)
            try:
                dst.sendall(data)
            except OSError:
                break
        self._drop(pair)

    def _drop(self, pair: _Pair, *, reset: bool = False) -> None:
        with self._lock:
            self._pairs.discard(pair)
        pair.close(reset=reset)
