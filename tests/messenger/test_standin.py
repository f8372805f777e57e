"""The Messenger stand-in exercised by real clients: stomp.py (raw /ws and {ep}/websocket) and
websocket-client speaking SockJS framing against the session endpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from stomp import utils as stomp_utils

from messenger.server import MessengerServer
from proxysync.sockjs import SockJSFrame, decode_server_frame, encode_client_messages, session_path
from tests.messenger.conftest import Collector, wait_for

EP = "/messenger/websocket"
RAW_PATHS = ["/ws", f"{EP}/websocket"]
MakeClient = Callable[..., tuple[Any, Collector]]


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def subscribed(server: MessengerServer, destination: str, n: int = 1) -> bool:
    return sum(s["destination"] == destination for s in server.stats()["subscriptions"]) >= n


@pytest.fixture
def server_factory() -> Iterator[Callable[..., MessengerServer]]:
    started: list[MessengerServer] = []

    def make(**kwargs: Any) -> MessengerServer:
        server = MessengerServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_http_side_answers_info_health_and_greeting(standin: MessengerServer) -> None:
    status, info = http("GET", f"{standin.sockjs_url}/info")
    assert status == 200 and info["websocket"] is True
    assert http("GET", f"{standin.url}/healthz") == (200, {"status": "ok", "sessions": 0})
    assert http("GET", standin.sockjs_url) == (200, "Welcome to SockJS!\n")
    assert http("POST", f"{standin.url}/publish", b"{}")[0] == 400  # no destination
    assert (
        http("GET", f"{standin.sockjs_url}/123/abc/xhr_streaming")[0] == 404
    )  # only the websocket transport


@pytest.mark.parametrize("path", RAW_PATHS)
def test_published_message_reaches_stomp_py_and_acks_are_recorded(
    standin: MessengerServer, stomp_clients: MakeClient, path: str
) -> None:
    # Given a stomp.py client subscribed with client-individual acks
    conn, seen = stomp_clients(standin.port, path)
    conn.connect(wait=True)
    conn.subscribe("/topic/proxy_config_events", id="sub-1", ack="client-individual")
    wait_for(lambda: subscribed(standin, "/topic/proxy_config_events"), what="SUBSCRIBE recorded")
    # When two events are published through the HTTP API
    body = b'{"payload":{"type":"ALL_CACHE_INVALID"}}'
    assert http("POST", f"{standin.url}/publish?destination=/topic/proxy_config_events", body) == (
        200,
        {"delivered": 1},
    )
    assert standin.publish("/topic/proxy_config_events", "second") == 1
    wait_for(lambda: len(seen.messages) == 2, what="two MESSAGE frames")
    # Then each MESSAGE carries the STOMP 1.2 headers, and ACK/NACK frames are recorded per message-id
    first, second = seen.messages
    assert first.body == body and second.body == b"second"
    headers = first.headers
    assert headers["destination"] == "/topic/proxy_config_events" and headers["subscription"] == "sub-1"
    assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(body))
    assert headers["ack"] == headers["message-id"]
    conn.ack(headers["ack"], "sub-1")
    conn.nack(second.headers["ack"], "sub-1")
    stats = wait_for(
        lambda: (s := standin.stats())["acks"] and s["nacks"] and s, what="ACK and NACK recorded"
    )
    assert stats["acks"] == {headers["message-id"]: 1} and stats["nacks"] == {second.headers["message-id"]: 1}
    transport = "websocket" if path == "/ws" else "sockjs-raw"
    assert [s["transport"] for s in stats["session_list"]] == [transport]


def test_send_reaches_other_subscribers_until_unsubscribe(
    standin: MessengerServer, stomp_clients: MakeClient
) -> None:
    sub, seen = stomp_clients(standin.port, "/ws")
    sub.connect(wait=True)
    sub.subscribe("/topic/x", id="0")
    wait_for(lambda: subscribed(standin, "/topic/x"))
    sender, _ = stomp_clients(standin.port, f"{EP}/websocket")
    sender.connect(wait=True)
    sender.send("/topic/x", "héllo", headers={"custom": "a:b"})
    (message,) = wait_for(lambda: seen.messages, what="MESSAGE from SEND")
    assert message.body == "héllo".encode() and message.headers["custom"] == "a:b"  # escaped on the wire
    sub.unsubscribe("0")
    wait_for(lambda: not subscribed(standin, "/topic/x"), what="UNSUBSCRIBE recorded")
    assert standin.publish("/topic/x", "gone") == 0


def test_ten_megabyte_bodies_travel_both_ways(standin: MessengerServer, stomp_clients: MakeClient) -> None:
    sub, seen = stomp_clients(standin.port, f"{EP}/websocket")
    sub.connect(wait=True)
    sub.subscribe("/topic/big", id="0")
    wait_for(lambda: subscribed(standin, "/topic/big"))
    big = b'{"payload":{"type":"ROUTES_REFRESH"},"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    assert http("POST", f"{standin.url}/publish?destination=/topic/big", big) == (200, {"delivered": 1})
    sender, _ = stomp_clients(standin.port, "/ws")
    sender.connect(wait=True)
    sender.send("/topic/big", big[::-1])
    wait_for(lambda: len(seen.messages) == 2, timeout=60, what="two 10 MB messages")
    digests = [hashlib.sha256(m.body).hexdigest() for m in seen.messages]
    assert digests == [hashlib.sha256(big).hexdigest(), hashlib.sha256(big[::-1]).hexdigest()]


def test_heartbeats_are_negotiated_and_sent(
    server_factory: Callable[..., MessengerServer], stomp_clients: MakeClient
) -> None:
    server = server_factory(heartbeat_ms=100)
    conn, seen = stomp_clients(server.port, "/ws", heartbeats=(100, 100))
    conn.connect(wait=True)
    assert seen.connected[0].headers["heart-beat"] == "100,100"
    assert seen.connected[0].headers["version"] == "1.2"
    wait_for(lambda: seen.heartbeats >= 3, what="three server heart-beats")
    assert server.stats()["session_list"][0]["heartbeat"] == [100, 100]


def test_a_client_that_promised_heartbeats_and_fell_silent_is_closed(
    server_factory: Callable[..., MessengerServer],
) -> None:
    server = server_factory(heartbeat_ms=100)
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send("CONNECT\naccept-version:1.2\nheart-beat:100,0\n\n\x00")
    assert ws.recv().startswith("CONNECTED\n")
    # nothing more from us: the server expects something every 100 ms and gives up after twice that
    wait_for(lambda: server.stats()["sessions"] == 0, what="silent client closed")
    assert ws.recv_data()[0] == websocket.ABNF.OPCODE_CLOSE
    ws.close()


def test_token_refused_then_accepted(
    server_factory: Callable[..., MessengerServer],
    stomp_clients: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="messenger")
    server = server_factory(token="t0ken-s3cret")
    # Given no token (or a wrong one): ERROR "authentication failed", then the socket closes
    bad, bad_seen = stomp_clients(server.port, "/ws", header={"Authorization": "Bearer wrong"})
    with pytest.raises(Exception):  # noqa: B017 - stomp.py raises ConnectFailedException once the socket closed
        bad.connect(wait=True)
    assert bad_seen.errors[0].headers["message"] == "authentication failed"
    wait_for(bad_seen.disconnected.is_set, what="socket closed after ERROR")
    # When the token comes on the HTTP upgrade, or on CONNECT (authorization or passcode): accepted
    on_upgrade, seen1 = stomp_clients(server.port, "/ws", header={"Authorization": "Bearer t0ken-s3cret"})
    on_upgrade.connect(wait=True)
    on_connect, seen2 = stomp_clients(server.port, f"{EP}/websocket")
    on_connect.connect(wait=True, headers={"authorization": "Bearer t0ken-s3cret"})
    by_passcode, seen3 = stomp_clients(server.port, "/ws")
    by_passcode.connect("user", "t0ken-s3cret", wait=True)
    assert seen1.connected and seen2.connected and seen3.connected
    stats = server.stats()
    assert stats["auth_failures"] == 1 and stats["connects"] == 3
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("messenger"))
    assert "authentication failed" in ours  # the refusal is logged ...
    assert "t0ken-s3cret" not in ours and "t0ken-s3cret" not in json.dumps(stats)  # ... the token never


def test_drop_closes_every_socket_and_clients_can_come_back(
    standin: MessengerServer, stomp_clients: MakeClient
) -> None:
    conn, seen = stomp_clients(standin.port, "/ws")
    conn.connect(wait=True)
    conn.subscribe("/topic/x", id="0")
    wait_for(lambda: subscribed(standin, "/topic/x"))
    assert http("POST", f"{standin.url}/admin/drop") == (200, {"dropped": 1})
    wait_for(seen.disconnected.is_set, what="client sees the connection drop")
    wait_for(lambda: standin.stats()["sessions"] == 0, what="session gone")
    again, seen_again = stomp_clients(standin.port, "/ws")
    again.connect(wait=True)
    assert seen_again.connected and standin.stats()["connects"] == 2


def test_stall_sends_nothing_then_resumes(server_factory: Callable[..., MessengerServer]) -> None:
    server = server_factory(heartbeat_ms=50)
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,50\n\n\x00\nSUBSCRIBE\nid:0\ndestination:/d\n\n\x00")
    assert ws.recv().startswith("CONNECTED\n")
    assert ws.recv() == "\n"  # heart-beats flow
    wait_for(lambda: subscribed(server, "/d"))
    assert http("POST", f"{server.url}/admin/stall?seconds=3") == (200, {"stalled_for": 3.0})
    assert server.stats()["stalled"] is True
    assert server.publish("/d", "lost") == 0
    # drain what was in flight when the stall began, then: silence (no heart-beat, no pong, no message)
    ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        for _ in range(10_000):  # heart-beats queued before the stall began
            ws.recv()
    ws.ping(b"anyone?")
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data_frame(control_frame=True)
    # after the stall the connection is alive again: heart-beats resume
    ws.settimeout(10)
    wait_for(lambda: not server.stats()["stalled"], what="stall over")
    assert server.publish("/d", "after") == 1
    while (frame := ws.recv()) == "\n":
        pass
    assert frame.startswith("MESSAGE\n") and frame.endswith("\n\nafter\x00")
    ws.close()


def test_bad_frames_get_an_error_and_a_close(standin: MessengerServer) -> None:
    ws = websocket.create_connection(standin.ws_url, timeout=10)
    ws.send("FOO\n\n\x00")
    error = stomp_utils.parse_frame(ws.recv().encode()[:-1])
    assert error.cmd == "ERROR" and error.headers["message"] == "unknown command 'FOO'"
    assert ws.recv_data()[0] == websocket.ABNF.OPCODE_CLOSE
    ws = websocket.create_connection(standin.ws_url, timeout=10)
    ws.send("SUBSCRIBE\nid:0\ndestination:/d\n\n\x00")
    assert "SUBSCRIBE before CONNECT" in ws.recv()
    assert standin.stats()["counters"]["errors"] == 2


def next_frame(ws: websocket.WebSocket) -> SockJSFrame:
    """The next SockJS frame that is not an ``h`` heartbeat."""
    while (frame := decode_server_frame(ws.recv())).kind == "heartbeat":
        pass
    return frame


def test_sockjs_session_speaks_framed_stomp(server_factory: Callable[..., MessengerServer]) -> None:
    server = server_factory(heartbeat_ms=0, sockjs_heartbeat_s=0.2)
    url = f"ws://127.0.0.1:{server.port}{session_path(EP)}"
    ws = websocket.create_connection(url, timeout=10)
    assert ws.recv() == "o"
    ws.send(encode_client_messages(["CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00"]))
    (connected,) = decode_server_frame(ws.recv()).messages
    assert connected.startswith("CONNECTED\nheart-beat:0,0\n") and "version:1.2" in connected
    ws.send(encode_client_messages(["SUBSCRIBE\nid:s\ndestination:/topic/t\nack:client\n\n\x00"]))
    wait_for(lambda: subscribed(server, "/topic/t"))
    assert server.publish("/topic/t", '{"a":"ü"}') == 1
    message = stomp_utils.parse_frame(next_frame(ws).messages[0].encode()[:-1])
    assert message.cmd == "MESSAGE" and message.body == '{"a":"ü"}'.encode()
    assert message.headers["content-length"] == str(len('{"a":"ü"}'.encode()))
    assert wait_for(lambda: ws.recv() == "h", what="SockJS heartbeat")
    ws.send(
        encode_client_messages(
            [f"ACK\nid:{message.headers['ack']}\n\n\x00", "DISCONNECT\nreceipt:77\n\n\x00"]
        )
    )
    assert next_frame(ws).messages == ("RECEIPT\nreceipt-id:77\n\n\x00",)
    closing = next_frame(ws)
    assert (closing.kind, closing.code, closing.reason) == ("close", 3000, "Go away!")
    assert server.stats()["acks"] == {message.headers["message-id"]: 1}
    ws.close()


def test_sockjs_bad_client_json_is_refused(standin: MessengerServer) -> None:
    ws = websocket.create_connection(f"ws://127.0.0.1:{standin.port}{session_path(EP)}", timeout=10)
    assert ws.recv() == "o"
    ws.send("CONNECT\n\n\x00")  # not a JSON array: a client that forgot the SockJS framing
    error = decode_server_frame(ws.recv())
    assert error.kind == "messages" and error.messages[0].startswith("ERROR\n")
    assert decode_server_frame(ws.recv()).kind == "close"


def test_messenger_command_serves_until_sigterm() -> None:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxysync", "messenger", "--port", "0", "--token", "tk-9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert http("GET", f"{match.group(1)}/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "stopped" in out and "tk-9" not in out + err + line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
