"""The listener against the Messenger stand-in, each way of reaching it (SockJS-framed, raw, plain, auto)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from listener.service import Listener
from messenger.server import MessengerServer
from proxysync import constants as C
from tests.listener.conftest import BrokerQueues, event, subscribed, wait_for

TOKEN = "standin-token-5b1f0c"


@pytest.fixture
def messenger() -> Iterator[MessengerServer]:
    server = MessengerServer(heartbeat_ms=1000).start()
    yield server
    server.stop()


@pytest.fixture
def secured_messenger() -> Iterator[MessengerServer]:
    server = MessengerServer(token=TOKEN, heartbeat_ms=1000).start()
    yield server
    server.stop()


def _publish_when_subscribed(server: MessengerServer, topic: str, body: str) -> None:
    wait_for(lambda: server.publish(C.topic_destination(topic), body) == 1, what="a subscriber to publish to")


# mode -> (endpoint, expected framing)
MODES = {
    "sockjs": (C.DEFAULT_ENDPOINT, "sockjs"),
    "sockjs-raw": (C.DEFAULT_ENDPOINT, "none"),
    "websocket": ("/ws", "none"),
    "auto": (C.DEFAULT_ENDPOINT, "sockjs"),  # /info answers -> SockJS-framed session
    "auto-plain": ("/ws", "none"),  # /ws/info is 404 -> plain WebSocket at the URL itself
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_transport_mode_delivers_events_as_tasks(
    mode: str,
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    queues: BrokerQueues,
) -> None:
    endpoint, framing = MODES[mode]
    listener = make_listener(
        WEBSOCKET_CLIENT_BASEURL=messenger.url,
        WEBSOCKET_CLIENT_ENDPOINT=endpoint,
        WEBSOCKET_CLIENT_TRANSPORT=mode.removesuffix("-plain"),
    )
    wait_for(subscribed(listener), what="subscription")
    assert listener.supervisor.session is not None
    assert listener.supervisor.session.transport.target.framing == framing
    _publish_when_subscribed(
        messenger,
        topic,
        event("CACHE_CLEAR_SERVICE_INVALID", tenantId="t1", serviceName="svc", eventId=f"ev-{mode}"),
    )
    wait_for(queues.events, what="the task")
    (task,) = queues.events()
    assert (task["name"], task["id"], task["kwargs"]["service_name"]) == (
        C.TASK_CLEAR_SERVICE,
        f"ev-{mode}",
        "svc",
    )


def test_sockjs_three_megabyte_frame_and_oversize_refused(
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    queues: BrokerQueues,
) -> None:
    listener = make_listener(WEBSOCKET_CLIENT_BASEURL=messenger.url, WEBSOCKET_CLIENT_TRANSPORT="sockjs")
    wait_for(subscribed(listener), what="subscription")
    big = json.dumps(
        {"payload": {"type": "ALL_CACHE_INVALID", "eventId": "big"}, "blob": "é" * 1_400_000},
        ensure_ascii=False,
    )
    assert 2_500_000 < len(big.encode()) < 3 * 1024 * 1024
    _publish_when_subscribed(messenger, topic, big)
    messenger.publish(
        C.topic_destination(topic),
        json.dumps(
            {"payload": {"type": "ALL_CACHE_INVALID", "eventId": "huge"}, "blob": "z" * (3 * 1024 * 1024)}
        ),
    )
    messenger.publish(C.topic_destination(topic), event("ALL_CACHE_INVALID", eventId="small"))
    wait_for(lambda: len(queues.events()) == 2, what="two tasks")
    assert [t["id"] for t in queues.events()] == ["big", "small"]
    assert listener.metrics.value("proxysync_listener_frames_rejected", reason="oversize") == 1


@pytest.mark.parametrize("mode", ["sockjs", "websocket"])
def test_a_huge_frame_is_refused_without_holding_it_and_the_session_survives(
    mode: str,
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    queues: BrokerQueues,
) -> None:
    # Given a 256 KiB frame limit (frames over twice that are never held in memory)
    endpoint = C.DEFAULT_ENDPOINT if mode == "sockjs" else "/ws"
    listener = make_listener(
        WEBSOCKET_CLIENT_BASEURL=messenger.url,
        WEBSOCKET_CLIENT_ENDPOINT=endpoint,
        WEBSOCKET_CLIENT_TRANSPORT=mode,
        WEBSOCKET_CLIENT_MAX_FRAME=256 * 1024,
    )
    wait_for(subscribed(listener), what="subscription")
    # When an 8 MB event arrives, then a small one
    huge = json.dumps({"payload": {"type": "ALL_CACHE_INVALID", "eventId": "huge"}, "blob": "h" * 8_000_000})
    _publish_when_subscribed(messenger, topic, huge)
    messenger.publish(C.topic_destination(topic), event("ALL_CACHE_INVALID", eventId="next"))
    # Then the huge one is refused as oversize (and was truncated on read), the next one dispatched
    wait_for(queues.events, what="the next task")
    assert [t["id"] for t in queues.events()] == ["next"]
    assert listener.metrics.value("proxysync_listener_frames_rejected", reason="oversize") == 1
    assert listener.supervisor.subscriptions == 1


def test_drop_reconnects_resubscribes_and_resyncs(
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    queues: BrokerQueues,
) -> None:
    listener = make_listener(WEBSOCKET_CLIENT_BASEURL=messenger.url)
    wait_for(subscribed(listener), what="subscription")
    # When the stand-in aborts every connection at the TCP level
    assert messenger.drop_all() == 1
    # Then: reconnect, resubscribe, second gap resync, events flow again
    wait_for(subscribed(listener, 2), what="second subscription")
    wait_for(lambda: len([t for t in queues.all() if t["id"].startswith("gap-")]) == 4, what="2nd resync")
    _publish_when_subscribed(messenger, topic, event("ALL_CACHE_INVALID", eventId="after"))
    wait_for(lambda: [t["id"] for t in queues.events()] == ["after"], what="event after the drop")


def test_stalled_server_is_detected_and_left(
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a 1 s liveness budget (STOMP heart-beats + WebSocket ping/read-idle)
    listener = make_listener(WEBSOCKET_CLIENT_BASEURL=messenger.url, WEBSOCKET_CLIENT_HEARTBEAT=1000)
    wait_for(subscribed(listener), what="subscription")
    # When the server freezes (reads nothing, sends nothing, answers no ping) for longer than that
    messenger.stall(3)
    # Then the listener notices within 2x the heart-beat and reconnects once the server answers again
    wait_for(lambda: listener.supervisor.state.value != "SUBSCRIBED", timeout=2.5, what="stall detected")
    wait_for(subscribed(listener, 2), timeout=15, what="resubscribed after the stall")
    lines = [r.getMessage() for r in caplog.records if "Transport error" in r.getMessage()]
    assert any("heart-beat" in line or "read-idle" in line for line in lines), lines


def test_auth_failure_then_success_with_a_rotated_token_file(
    secured_messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    tmp_path: Path,
    topic: str,
    queues: BrokerQueues,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token-value\n")
    listener = make_listener(
        WEBSOCKET_CLIENT_BASEURL=secured_messenger.url, WEBSOCKET_CLIENT_TOKEN_FILE=str(token_file)
    )
    # When the Messenger refuses the token: counted, logged, retried with backoff
    wait_for(lambda: listener.metrics.value("proxysync_listener_auth_failures") >= 2, what="auth failures")
    assert listener.supervisor.subscriptions == 0
    refused = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert refused and "wrong-token-value" not in " ".join(refused)
    # Then a rotated token file is picked up by the next attempt
    token_file.write_text(TOKEN)
    wait_for(subscribed(listener), what="subscription with the good token")
    _publish_when_subscribed(secured_messenger, topic, event("ALL_CACHE_INVALID", eventId="authed"))
    wait_for(lambda: [t["id"] for t in queues.events()] == ["authed"], what="task")


class _TokenEndpoint(BaseHTTPRequestHandler):
    issued: list[str] = []
    tokens: list[str] = []  # handed out in turn, then TOKEN

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = self.rfile.read(length).decode()
        ok = "grant_type=client_credentials" in form and self.headers.get("Authorization", "").startswith(
            "Basic "
        )
        token = self.tokens.pop(0) if self.tokens and ok else TOKEN
        body = json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
            if ok
            else {"error": "invalid_client"}
        ).encode()
        self.issued.append(token if ok else "")
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


def test_oauth2_client_credentials_token_is_fetched_once_and_used(
    secured_messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    queues: BrokerQueues,
) -> None:
    _TokenEndpoint.issued, _TokenEndpoint.tokens = [], []
    iam = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=iam.serve_forever, daemon=True).start()
    try:
        listener = make_listener(
            WEBSOCKET_CLIENT_BASEURL=secured_messenger.url,
            IAM_TOKEN_URL=f"http://127.0.0.1:{iam.server_address[1]}/oauth/token",
            IAM_CLIENT_ID="proxysync",
            IAM_CLIENT_SECRET="client-secret-xyz",
        )
        wait_for(subscribed(listener), what="subscription")
        # A drop and reconnect reuses the cached token
        secured_messenger.drop_all()
        wait_for(subscribed(listener, 2), what="second subscription")
        _publish_when_subscribed(secured_messenger, topic, event("ROUTES_REFRESH", eventId="iam"))
        wait_for(lambda: [t["id"] for t in queues.events()] == ["iam"], what="task")
        assert _TokenEndpoint.issued == [TOKEN]
    finally:
        iam.shutdown()
        iam.server_close()


def test_an_auth_error_fetches_a_new_oauth2_token(
    secured_messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a token endpoint whose first token the Messenger does not accept
    _TokenEndpoint.issued, _TokenEndpoint.tokens = [], ["revoked-token-0001"]
    iam = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=iam.serve_forever, daemon=True).start()
    try:
        listener = make_listener(
            WEBSOCKET_CLIENT_BASEURL=secured_messenger.url,
            IAM_TOKEN_URL=f"http://127.0.0.1:{iam.server_address[1]}/oauth/token",
            IAM_CLIENT_ID="proxysync",
            IAM_CLIENT_SECRET="client-secret-xyz",
        )
        # Then the refusal drops the cached token, the next attempt fetches a new one and succeeds
        wait_for(subscribed(listener), what="subscription with the second token")
        assert _TokenEndpoint.issued == ["revoked-token-0001", TOKEN]
        assert listener.metrics.value("proxysync_listener_auth_failures") == 1
        assert any("refused the credentials" in r.getMessage() for r in caplog.records)
        # (our own lines never carry it; stomp.py's DEBUG frame dumps are redacted by the handler filter)
        assert not any(
            "revoked-token-0001" in r.getMessage() for r in caplog.records if r.name.startswith("listener")
        )
    finally:
        iam.shutdown()
        iam.server_close()


def test_every_frame_is_acked_good_bad_and_oversize(
    messenger: MessengerServer, make_listener: Callable[..., Listener], topic: str, queues: BrokerQueues
) -> None:
    # Given a listener subscribed with ack: client-individual
    listener = make_listener(WEBSOCKET_CLIENT_BASEURL=messenger.url, WEBSOCKET_CLIENT_MAX_FRAME=64 * 1024)
    wait_for(subscribed(listener), what="subscription")
    (sub,) = [s for s in messenger.stats()["subscriptions"] if s["destination"] == C.topic_destination(topic)]
    assert sub["ack"] == "client-individual"
    # When a good frame, bad ones and an oversize one arrive
    bodies = [
        event("ALL_CACHE_INVALID", eventId="ok-1"),
        "{not json",
        event("NOPE"),
        "o" * 100_000,
        event("ROUTES_REFRESH", eventId="ok-2"),
    ]
    _publish_when_subscribed(messenger, topic, bodies[0])
    for body in bodies[1:]:
        messenger.publish(C.topic_destination(topic), body)
    # Then the good ones are tasks, and every one of the five was ACKed (none left pending)
    wait_for(lambda: len(queues.events()) == 2, what="two tasks")
    wait_for(lambda: sum(messenger.stats()["acks"].values()) == 5, what="five ACKs")
    assert messenger.stats()["pending_acks"] == 0


def test_a_full_spool_says_so_loudly_and_counts_what_it_could_not_keep(
    messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given no broker at all and room for 3 spooled tasks
    listener = make_listener(
        WEBSOCKET_CLIENT_BASEURL=messenger.url,
        CELERY_BROKER_URL="redis://127.0.0.1:9/0",
        WEBSOCKET_CLIENT_GAP_POLICY="none",
        spool_max=3,
    )
    wait_for(subscribed(listener), what="subscription")
    # When 5 events arrive
    _publish_when_subscribed(messenger, topic, event("ALL_CACHE_INVALID", eventId="s-0"))
    for i in range(1, 5):
        messenger.publish(C.topic_destination(topic), event("ALL_CACHE_INVALID", eventId=f"s-{i}"))
    # Then 3 are on disk, 2 are counted as dropped with an ERROR line each, and only the 3 kept were ACKed
    wait_for(
        lambda: listener.metrics.value("proxysync_listener_frames_rejected", reason="spool_full") == 2,
        what="two spool_full rejections",
    )
    assert listener.spool.depth == 3 and [c.task_id for _, c in listener.spool.peek()] == [
        "s-0",
        "s-1",
        "s-2",
    ]
    assert len([r for r in caplog.records if "SPOOL FULL" in r.getMessage() and r.levelname == "ERROR"]) == 2
    wait_for(lambda: sum(messenger.stats()["acks"].values()) == 3, what="three ACKs")
    assert messenger.stats()["pending_acks"] == 2
    assert listener.ready()[0] is False
