"""Fixtures for the Messenger stand-in tests: a running stand-in, stomp.py clients, a polling helper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stomp

from messenger.server import MessengerServer
from tests.support.waiting import wait_for  # noqa: F401 - re-exported for the tests here


class Collector(stomp.ConnectionListener):  # type: ignore[misc]
    """Records what a stomp.py connection sees."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.connected: list[Any] = []
        self.heartbeats = 0
        self.receipts: list[str] = []
        self.disconnected = threading.Event()

    def on_connected(self, frame: Any) -> None:
        self.connected.append(frame)

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def on_disconnected(self) -> None:
        self.disconnected.set()


@pytest.fixture
def standin() -> Iterator[MessengerServer]:
    server = MessengerServer(heartbeat_ms=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stomp_clients() -> Iterator[Callable[..., tuple[stomp.WSStompConnection, Collector]]]:
    """``make(port, path, **kw)`` -> (stomp.py WSStompConnection, its Collector); disconnected at teardown."""
    made: list[stomp.WSStompConnection] = []

    def make(port: int, path: str = "/ws", **kwargs: Any) -> tuple[stomp.WSStompConnection, Collector]:
        kwargs.setdefault("auto_decode", False)  # bodies stay bytes: compare them exactly
        conn = stomp.WSStompConnection(
            [("127.0.0.1", port)], ws_path=path, reconnect_attempts_max=1, **kwargs
        )
        collector = Collector()
        conn.set_listener("collector", collector)
        made.append(conn)
        return conn, collector

    yield make
    for conn in made:
        try:
            if conn.is_connected():
                conn.disconnect()
            conn.transport.disconnect_socket()
        except Exception:  # teardown of a connection the test may have broken on purpose
            pass


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert.pem doubles as the CA bundle that trusts it)."""
    from tests.support.tls import self_signed

    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return str(cert), str(key)
