"""``proxysync publish`` through click's CliRunner: to a running stand-in (HTTP and STOMP) and to RabbitMQ's
STOMP and Web-STOMP, with a stomp.py subscriber receiving what was published."""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import stomp
from click.testing import CliRunner

from messenger.server import MessengerServer
from proxysync.cli import main
from proxysync.events import EventType, parse_event
from tests.conftest import unavailable
from tests.messenger.conftest import Collector, wait_for

TOPIC = "/topic/proxy_config_events"
MakeClient = Callable[..., tuple[Any, Collector]]


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, ["publish", *args], input=input, catch_exceptions=False)


@pytest.fixture
def subscriber(standin: MessengerServer, stomp_clients: MakeClient) -> Collector:
    conn, seen = stomp_clients(standin.port, "/ws")
    conn.connect(wait=True)
    conn.subscribe(TOPIC, id="0", headers={"receipt": "subscribed"})
    wait_for(lambda: "subscribed" in seen.receipts, what="subscription receipt")
    return seen


def test_publish_builds_the_original_body_and_the_standin_delivers_it(
    standin: MessengerServer, subscriber: Collector
) -> None:
    result = run(
        "--type", "CACHE_CLEAR_INVALID", "--tenant", "tenant-123", "--app", "app-456", "--url", standin.url
    )
    assert result.exit_code == 0, result.output
    assert (
        "published CACHE_CLEAR_INVALID" in result.output and "delivered to 1 subscriber(s)" in result.output
    )
    (message,) = wait_for(lambda: subscriber.messages, what="the published event")
    body = json.loads(message.body)
    assert body["payload"] == {"type": "CACHE_CLEAR_INVALID", "tenantId": "tenant-123", "appId": "app-456"}
    assert body["source"] == "proxysync-cli"
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    event = parse_event(message.body)
    assert event.type is EventType.CACHE_CLEAR_INVALID and event.event_id in result.output


def test_publish_reads_a_whole_body_from_stdin_and_a_payload_from_a_file(
    standin: MessengerServer, subscriber: Collector, tmp_path: Path
) -> None:
    whole = {
        "payload": {
            "type": "CACHE_DELETE_INVALID",
            "key": "tenant-1#app-1#/api/pay#CONFIG#production",
            "eventId": "ev-fixed-1",
        },
        "timestamp": "2024-01-15T10:30:00Z",
        "source": "config-manager",
        "extra": 1,
    }
    assert run("--json", "-", "--url", standin.url, input=json.dumps(whole)).exit_code == 0
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(
        json.dumps({"type": "CACHE_CLEAR_SERVICE_INVALID", "tenantId": "t1", "serviceName": "stripe_payment"})
    )
    # an option overrides the file's field
    assert run("--json", str(payload_file), "--tenant", "t2", "--url", standin.url).exit_code == 0
    first, second = wait_for(lambda: len(subscriber.messages) == 2 and subscriber.messages, what="2 events")
    assert json.loads(first.body) == whole and parse_event(first.body).event_id == "ev-fixed-1"
    assert json.loads(second.body)["payload"] == {
        "type": "CACHE_CLEAR_SERVICE_INVALID",
        "tenantId": "t2",
        "serviceName": "stripe_payment",
    }


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--type", "CACHE_DELETE_INVALID"], "missing_field"),
        (["--type", "CACHE_CLEAR_INVALID", "--tenant", "bad tenant!", "--app", "a"], "bad_id"),
        (["--json", "-"], "bad_type"),
    ],
)
def test_invalid_events_are_refused_with_exit_2_and_nothing_is_sent(
    standin: MessengerServer, args: list[str], reason: str
) -> None:
    result = run(*args, "--url", standin.url, input='{"payload": {"type": "NOPE"}}')
    assert result.exit_code == 2
    assert f"refused: not a valid event ({reason})" in result.output
    assert standin.stats()["counters"].get("published", 0) == 0


def test_unreachable_standin_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("--type", "ROUTES_REFRESH", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert result.exit_code == 1 and "cannot reach the Messenger stand-in" in result.output


def test_stomp_url_sends_through_stomp_with_a_token(stomp_clients: MakeClient) -> None:
    server = MessengerServer(token="pub-token").start()
    try:
        conn, seen = stomp_clients(
            server.port, "/messenger/websocket/websocket", header={"Authorization": "Bearer pub-token"}
        )
        conn.connect(wait=True)
        conn.subscribe(TOPIC, id="0", headers={"receipt": "subscribed"})
        wait_for(lambda: "subscribed" in seen.receipts)
        refused = run(
            "--type", "ALL_CACHE_INVALID", "--stomp-url", server.ws_url, "--token", "wrong", "--timeout", "3"
        )
        assert refused.exit_code == 1 and "authentication failed" in refused.output
        ok = run("--type", "ALL_CACHE_INVALID", "--stomp-url", server.ws_url, "--token", "pub-token")
        assert ok.exit_code == 0 and "accepted (RECEIPT)" in ok.output
        (message,) = wait_for(lambda: seen.messages, what="event sent over STOMP")
        assert parse_event(message.body).type is EventType.ALL_CACHE_INVALID
        assert message.headers["content-type"] == "application/json"
        assert "pub-token" not in ok.output + refused.output
    finally:
        server.stop()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbit_subscriber() -> Iterator[tuple[str, Collector]]:
    """A stomp.py subscriber on RabbitMQ's STOMP port, on a destination of this test's own."""
    if not _port_open(61613):
        unavailable(
            "RabbitMQ STOMP is not listening on 127.0.0.1:61613 (rabbitmq-plugins enable rabbitmq_stomp)"
        )
    destination = f"/topic/pstest-{uuid.uuid4().hex[:12]}"  # never the shared events topic
    conn = stomp.Connection12([("127.0.0.1", 61613)], vhost="/", auto_decode=False)
    seen = Collector()
    conn.set_listener("collector", seen)
    conn.connect("guest", "guest", wait=True)
    conn.subscribe(destination, id="0", headers={"receipt": "subscribed"})
    wait_for(lambda: "subscribed" in seen.receipts, what="RabbitMQ subscription receipt")
    try:
        yield destination, seen
    finally:
        conn.disconnect()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("url", ["stomp://127.0.0.1:61613", "ws://127.0.0.1:15674/ws"])
def test_publish_to_rabbitmq_reaches_a_stomp_subscriber(
    rabbit_subscriber: tuple[str, Collector], url: str
) -> None:
    destination, seen = rabbit_subscriber
    if url.startswith("ws:") and not _port_open(15674):
        unavailable("RabbitMQ Web-STOMP is not listening on 127.0.0.1:15674 (rabbitmq_web_stomp)")
    result = run(
        "--type",
        "ROUTES_REFRESH",
        "--event-id",
        "ev-rabbit-1",
        "--stomp-url",
        url,
        "--stomp-host",
        "/",
        "--login",
        "guest",
        "--passcode",
        "guest",
        "--destination",
        destination,
    )
    assert result.exit_code == 0, result.output
    (message,) = wait_for(lambda: seen.messages, what="event through RabbitMQ")
    event = parse_event(message.body)
    assert event.type is EventType.ROUTES_REFRESH and event.event_id == "ev-rabbit-1"
    assert json.loads(message.body)["source"] == "proxysync-cli"


def test_wss_is_verified_by_default_and_a_ca_bundle_makes_it_trusted(
    tls_files: tuple[str, str], stomp_clients: MakeClient
) -> None:
    # Given a stand-in serving wss:// with a self-signed certificate
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = MessengerServer(ssl_context=context).start()
    try:
        assert server.ws_url.startswith("wss://")
        # When publishing without trusting that certificate: refused (verification is on by default)
        untrusted = run("--type", "ALL_CACHE_INVALID", "--stomp-url", server.ws_url, "--timeout", "3")
        assert untrusted.exit_code == 1 and "cannot connect" in untrusted.output
        assert server.stats()["connects"] == 0
        # Then with --ca-bundle naming it: accepted over TLS
        trusted = run("--type", "ALL_CACHE_INVALID", "--stomp-url", server.ws_url, "--ca-bundle", cert)
        assert trusted.exit_code == 0, trusted.output
        assert server.stats()["counters"]["sends"] == 1
    finally:
        server.stop()
