"""The Redis fast path writes exactly the message Celery's ``send_task`` writes, and a real worker runs it."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis

from listener.errors import BrokerUnavailable
from listener.redis_publish import RedisSender, task_message
from listener.sender import CelerySender, make_sender
from proxysync import constants as C
from proxysync.events import TaskCall

CALL = TaskCall(name=C.TASK_DELETE, task_id="ev-fast-1", queue=C.QUEUE_INVALIDATIONS,
                kwargs={"key": "t1#a1#/api/p#CONFIG#prod", "event_id": "ev-fast-1", "event_time": 1.5})


def _comparable(raw: bytes) -> dict[str, Any]:
    env = json.loads(raw)
    env["body"] = json.loads(base64.b64decode(env["body"]))
    for volatile in ("delivery_tag", "reply_to"):
        env["properties"].pop(volatile)
    env["headers"].pop("origin")
    return dict(env)


def test_task_message_is_what_send_task_writes(redis_client: redis.Redis, queue_prefix: str) -> None:
    # Given Celery's own send_task, configured as the listener configures it, on the real Redis broker
    queue = C.queue_name(CALL.queue)
    celery_sender = CelerySender("redis://127.0.0.1:6379/0")
    try:
        celery_sender.send(CALL)
    finally:
        celery_sender.close()
    theirs = redis_client.rpop(queue)
    assert theirs is not None
    # When the fast path builds the message for the same call
    ours = task_message(CALL, queue)
    # Then both are the same message (but for the per-publish tag, reply_to and origin)
    assert _comparable(ours) == _comparable(theirs)


def test_make_sender_picks_lpush_for_redis_and_send_task_for_amqp() -> None:
    fast = make_sender("redis://127.0.0.1:6379/0")
    slow = make_sender("amqp://guest:guest@127.0.0.1:5672//")
    try:
        assert isinstance(fast, RedisSender)
        assert isinstance(slow, CelerySender)
    finally:
        fast.close()
        slow.close()


def test_keyprefix_prefixes_the_queue_list(redis_client: redis.Redis, queue_prefix: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Given CELERY_BROKER_KEYPREFIX (kombu's global_keyprefix) as workers are configured with it
    kp = f"kp-{uuid.uuid4().hex[:6]}:"
    monkeypatch.setenv("CELERY_BROKER_KEYPREFIX", kp)
    sender = make_sender("redis://127.0.0.1:6379/0")
    try:
        # When a task is sent
        sender.send(CALL)
        # Then it is in the prefixed list a worker with that prefix BRPOPs from
        assert redis_client.llen(kp + C.queue_name(CALL.queue)) == 1
    finally:
        redis_client.delete(kp + C.queue_name(CALL.queue))
        sender.close()


def test_unreachable_broker_raises_broker_unavailable_quickly() -> None:
    sender = RedisSender("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        with pytest.raises(BrokerUnavailable, match="ConnectionError"):
            sender.send(CALL)
        assert sender.reachable() is False
    finally:
        sender.close()
