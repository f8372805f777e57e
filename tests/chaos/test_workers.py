"""Fault 1: ``kill -9`` of a worker's pool child and of a whole worker while events flow.

Two workers consume; one loses a pool child mid-stream (Celery's ``task_reject_on_worker_lost`` puts that
message back), then is killed as a whole and a replacement starts. On Redis its reserved messages come back
after the visibility timeout (8 s here) at the next restore sweep; on RabbitMQ at once, when its connection
dies. Every event must be applied, none twice. Run on both brokers: on Redis a kill can land in kombu's BRPOP
window (:func:`tests.support.pipeline.popped_and_dropped`); the listener's delivery confirmation sends such an
event again, so it is applied all the same. RabbitMQ has no such window.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.listener.conftest import wait_for
from tests.support.pipeline import Pipeline, assert_nothing_lost
from tests.tasks.conftest import AMQP_URL, amqp_answers

pytestmark = pytest.mark.chaos


@pytest.fixture(params=["redis", "amqp"])
def any_broker_pipeline(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, prefix: str
                        ) -> Iterator[Pipeline]:
    amqp = request.param == "amqp"
    if amqp and not amqp_answers(AMQP_URL):
        unavailable(f"RabbitMQ does not answer at {AMQP_URL}")
    p = Pipeline(tmp_path, redis_url, prefix, amqp_url=AMQP_URL if amqp else None).start()
    try:
        yield p
    finally:
        p.close()


def test_kill_9_of_a_pool_child_and_of_a_whole_worker_loses_nothing(any_broker_pipeline: Pipeline) -> None:
    p = any_broker_pipeline
    broker = "RabbitMQ" if p.amqp_url else "Redis"
    # Given a listener and two prefork workers sharing the queues
    victim = p.start_worker(concurrency=2)
    p.start_worker(concurrency=1)
    p.start_listener()
    # When 400 events flow and the victim loses a child, then dies as a whole
    stream = p.stream(400, rate=150)
    stream.wait_published(100)
    children = wait_for(victim.children, 10, "the victim's pool children")
    os.kill(children[0], signal.SIGKILL)
    stream.wait_published(250)
    victim.kill9()
    p.start_worker(concurrency=1)  # the replacement
    stream.join()
    # Then every event is applied exactly once in effect
    p.wait_applied(40)
    counts = p.account(f"1 kill -9 worker child + whole worker ({broker})", window=True)
    assert_nothing_lost(p, counts)
