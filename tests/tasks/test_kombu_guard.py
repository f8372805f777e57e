"""The worker survives kombu's restore-after-release bug (tasks/kombu_guard.py), on a real Redis broker."""

from __future__ import annotations

import uuid

import kombu
import pytest
import redis

from proxysync.redis_server import RedisServer
from tasks import kombu_guard


def test_closing_a_channel_whose_connection_was_released_keeps_the_message_and_does_not_raise(
        caplog: pytest.LogCaptureFixture) -> None:
    kombu_guard.install()
    with RedisServer() as server:
        # Given a message a worker took (unacknowledged) from a real Redis broker
        conn = kombu.Connection(server.url)
        queue = kombu.Queue(f"q-{uuid.uuid4().hex[:6]}")
        with conn.Producer() as producer:
            producer.publish({"x": 1}, routing_key=queue.name, declare=[queue], serializer="json")
        channel = conn.channel()
        assert channel.basic_get(queue.name, no_ack=False) is not None
        # And a lost broker connection after which kombu released the connection (as Celery's close does)
        channel._pool = None
        channel.connection.client = None
        # When the channel's unacked messages are restored at close
        channel.qos.restore_unacked_once()
        # Then nothing escapes (the worker would have died), the message is safe in the unacked set for the
        # visibility-timeout sweep, and the log says so once
        assert redis.Redis.from_url(server.url).hlen("unacked") == 1
        assert any("stay in the broker's unacked" in r.getMessage() for r in caplog.records)


def test_install_is_idempotent() -> None:
    from kombu.transport import redis as kombu_redis

    kombu_guard.install()
    first = kombu_redis.QoS.restore_unacked_once
    kombu_guard.install()
    assert kombu_redis.QoS.restore_unacked_once is first
