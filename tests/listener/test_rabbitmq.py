"""The listener against a real third-party STOMP server: RabbitMQ Web-STOMP (ws://127.0.0.1:15674/ws)."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from listener.logs import setup_logging
from listener.service import Listener
from proxysync import constants as C
from proxysync.redis_server import RedisServer
from tests.listener.conftest import BrokerQueues, event, rabbit_drop_connections, subscribed, wait_for

pytestmark = pytest.mark.rabbitmq
KEY = "tenant-123#app-456#/api/payment#CONFIG#production"


def test_every_event_type_becomes_its_task(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_publish: Callable[[str | bytes], None],
    queues: BrokerQueues,
) -> None:
    # Given a listener subscribed through RabbitMQ Web-STOMP
    listener = make_listener(**rabbit)
    wait_for(subscribed(listener), what="subscription")
    # When one event of each type is published (with its own eventId)
    rabbit_publish(event("CACHE_CLEAR_INVALID", tenantId="tenant-123", appId="app-456", eventId="e1"))
    rabbit_publish(event("CACHE_DELETE_INVALID", key=KEY, eventId="e2"))
    rabbit_publish(event("ALL_CACHE_INVALID", eventId="e3"))
    rabbit_publish(
        event(
            "CACHE_CLEAR_SERVICE_INVALID", tenantId="tenant-123", serviceName="stripe_payment", eventId="e4"
        )
    )
    rabbit_publish(event("ROUTES_REFRESH", eventId="e5"))
    # Then each became its task, by name, on its queue, with task_id = event id
    wait_for(lambda: len(queues.events()) == 5, what="5 tasks in the broker")
    inv = {t["id"]: t for t in queues.tasks(C.QUEUE_INVALIDATIONS)}
    routes = {t["id"]: t for t in queues.tasks(C.QUEUE_ROUTES)}
    assert inv["e1"]["name"] == C.TASK_CLEAR
    assert inv["e1"]["kwargs"] | {"event_time": 0} == {
        "tenant_id": "tenant-123",
        "app_id": "app-456",
        "event_id": "e1",
        "event_time": 0,
    }
    assert (inv["e2"]["name"], inv["e2"]["kwargs"]["key"]) == (C.TASK_DELETE, KEY)
    assert inv["e3"]["name"] == C.TASK_INVALIDATE_ALL
    assert inv["e4"]["name"] == C.TASK_CLEAR_SERVICE
    assert inv["e4"]["kwargs"]["service_name"] == "stripe_payment"
    assert routes["e5"]["name"] == C.TASK_ROUTES_REFRESH
    # And the first subscription ran the gap policy once: invalidate-all + routes refresh with a gap id
    gap = [t for t in queues.all() if t["id"].startswith("gap-")]
    assert sorted(t["name"] for t in gap) == sorted([C.TASK_INVALIDATE_ALL, C.TASK_ROUTES_REFRESH])
    assert listener.metrics.value("proxysync_listener_frames_dispatched", task=C.TASK_CLEAR) == 1


BAD_FRAMES: list[tuple[str, bytes]] = [
    ("not_json", b"{not json"),
    ("not_utf8", b'{"payload": {"type": "ALL_CACHE_INVALID", "x": "\xff\xfe"}}'),
    ("not_object", b"[1, 2]"),
    ("no_payload", b'{"timestamp": "2024-01-15T10:30:00Z"}'),
    ("wrong_type", b'{"payload": "CACHE_CLEAR_INVALID"}'),
    ("bad_type", event("NO_SUCH_EVENT").encode()),
    ("missing_field", event("CACHE_CLEAR_INVALID", tenantId="t1").encode()),
    ("wrong_type", event("CACHE_CLEAR_INVALID", tenantId=123, appId="a1").encode()),
    ("bad_id", event("CACHE_CLEAR_INVALID", tenantId="t1;DROP", appId="a1").encode()),
    ("bad_id", event("CACHE_CLEAR_INVALID", tenantId="t" * 300, appId="a1").encode()),
]


def test_bad_frames_are_refused_and_a_following_good_frame_still_dispatched(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_publish: Callable[[str | bytes], None],
    queues: BrokerQueues,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = make_listener(**rabbit)
    wait_for(subscribed(listener), what="subscription")
    caplog.set_level(logging.WARNING, logger="listener")
    # When every kind of bad frame arrives, then a good one
    for _, body in BAD_FRAMES:
        rabbit_publish(body)
    rabbit_publish(event("CACHE_DELETE_INVALID", key=KEY, eventId="good-1"))
    # Then only the good one became a task
    wait_for(queues.events, what="the good frame's task")
    assert [t["id"] for t in queues.events()] == ["good-1"]
    # And each bad one was counted by its reason, with one log line naming the reason
    for reason in {r for r, _ in BAD_FRAMES}:
        expected = sum(1 for r, _ in BAD_FRAMES if r == reason)
        assert listener.metrics.value("proxysync_listener_frames_rejected", reason=reason) == expected, reason
    rejected = [r.getMessage() for r in caplog.records if "rejected frame" in r.getMessage()]
    assert len(rejected) == len(BAD_FRAMES)
    assert any("(bad_id)" in line and "tenantId" in line for line in rejected)
    # And the listener never stopped: still subscribed on its first session
    assert listener.supervisor.subscriptions == 1 and listener.supervisor.state.value == "SUBSCRIBED"


def test_three_megabyte_frame_is_dispatched_and_an_oversize_one_refused(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_publish: Callable[[str | bytes], None],
    queues: BrokerQueues,
) -> None:
    # Given the default 3 MiB limit
    listener = make_listener(**rabbit)
    wait_for(subscribed(listener), what="subscription")
    big = json.dumps({"payload": {"type": "ALL_CACHE_INVALID", "eventId": "big-1"}, "blob": "x" * 3_000_000})
    too_big = json.dumps(
        {"payload": {"type": "ALL_CACHE_INVALID", "eventId": "huge-1"}, "blob": "y" * (3 * 1024 * 1024 + 10)}
    )
    # When a 3 MB frame, a 3 MiB + frame and a small one arrive
    rabbit_publish(big)
    rabbit_publish(too_big)
    rabbit_publish(event("ALL_CACHE_INVALID", eventId="after-1"))
    # Then the 3 MB event and the small one are tasks, the oversize one refused (one counter, one line)
    wait_for(lambda: len(queues.events()) == 2, what="two tasks")
    assert [t["id"] for t in queues.events()] == ["big-1", "after-1"]
    assert listener.metrics.value("proxysync_listener_frames_rejected", reason="oversize") == 1
    assert listener.supervisor.subscriptions == 1


def test_server_drop_reconnects_resubscribes_and_sends_the_gap_policy(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_vhost: str,
    rabbit_publisher: Callable[..., Callable[[str | bytes], None]],
    queues: BrokerQueues,
) -> None:
    # Given a listener on a vhost of the tests' own
    listener = make_listener(**(rabbit | {"WEBSOCKET_CLIENT_STOMP_HOST": rabbit_vhost}))
    wait_for(subscribed(listener), what="subscription")
    # When RabbitMQ closes the connection
    rabbit_drop_connections(rabbit_vhost)
    # Then the listener reconnects and subscribes again, and runs the gap policy a second time
    wait_for(subscribed(listener, 2), what="second subscription")
    wait_for(lambda: len([t for t in queues.all() if t["id"].startswith("gap-")]) == 4, what="2nd gap resync")
    gaps = {t["id"].split(":")[0] for t in queues.all() if t["id"].startswith("gap-")}
    assert len(gaps) == 2  # a fresh gap id per subscription
    assert listener.metrics.value("proxysync_listener_reconnects") == 1
    # And events flow on the new session
    rabbit_publisher(rabbit_vhost)(event("ALL_CACHE_INVALID", eventId="after-drop"))
    wait_for(lambda: [t["id"] for t in queues.events()] == ["after-drop"], what="event after the drop")


def test_broker_outage_spools_then_replays_everything_in_order(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_publish: Callable[[str | bytes], None],
    queue_prefix: str,
) -> None:
    import redis

    # Given a listener whose Celery broker is a private Redis we may stop
    with RedisServer() as broker:
        client = redis.Redis.from_url(broker.url)
        queues = BrokerQueues(client, queue_prefix)
        listener = make_listener(CELERY_BROKER_URL=broker.url, WEBSOCKET_CLIENT_GAP_POLICY="none", **rabbit)
        wait_for(subscribed(listener), what="subscription")
        rabbit_publish(event("ALL_CACHE_INVALID", eventId="before"))
        wait_for(queues.events, what="first task")
        # When the broker goes away and events keep coming
        broker.stop()
        for i in range(10):
            rabbit_publish(event("CACHE_DELETE_INVALID", key=f"t#a#/p{i}#CONFIG#prod", eventId=f"out-{i}"))
        wait_for(lambda: listener.spool.depth == 10, what="10 spooled events")
        assert listener.ready()[0] is False
        # Then once it is back, the spool is replayed: nothing lost, order kept
        broker.start()
        wait_for(lambda: listener.spool.depth == 0, what="spool drained")
        rabbit_publish(event("ALL_CACHE_INVALID", eventId="after"))
        wait_for(lambda: len(queues.events()) == 11, what="replayed tasks")  # "before" died with the server
        assert [t["id"] for t in queues.events()] == [f"out-{i}" for i in range(10)] + ["after"]
        assert listener.metrics.value("proxysync_listener_spooled") == 10
        wait_for(lambda: listener.ready()[0], what="ready again")
        client.close()


def test_token_never_appears_in_logs_even_at_debug(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
    rabbit_publish: Callable[[str | bytes], None],
    queues: BrokerQueues,
) -> None:
    secret = "tok-9f8e7d6c5b4a-very-secret"
    stream = io.StringIO()
    root_level = logging.getLogger().level
    handler = setup_logging("text", level=logging.DEBUG, stream=stream)
    try:
        listener = make_listener(WEBSOCKET_CLIENT_TOKEN=secret, **rabbit)
        wait_for(subscribed(listener), what="subscription")
        rabbit_publish(event("ALL_CACHE_INVALID", eventId="logged"))
        wait_for(queues.events, what="task")
        listener.stop(5)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    text = stream.getvalue()
    assert "authorization:Bearer ***" in text  # stomp.py logged the CONNECT/SUBSCRIBE frames...
    assert secret not in text  # ...with the token redacted


def test_health_ready_and_metrics_endpoints(
    make_listener: Callable[..., Listener],
    rabbit: dict[str, Any],
) -> None:
    listener = make_listener(**rabbit)
    wait_for(subscribed(listener), what="subscription")
    base = f"http://127.0.0.1:{listener.http_port}"
    with urllib.request.urlopen(base + "/healthz") as resp:
        assert resp.status == 200
    ready = wait_for(
        lambda: _get(base + "/readyz") if _get(base + "/readyz")[0] == 200 else None, what="ready"
    )
    assert json.loads(ready[1])["subscribed"] is True
    metrics = _get(base + "/metrics")[1]
    assert "proxysync_listener_connected 1.0" in metrics
    assert "proxysync_listener_spool_depth 0.0" in metrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
