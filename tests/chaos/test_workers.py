"""Fault 1: ``kill -9`` of a worker's pool child and of a whole worker while events flow.

Two workers consume; one loses a pool child mid-stream (Celery's ``task_reject_on_worker_lost`` puts that
message back), then is killed as a whole (its reserved messages come back after the broker's visibility
timeout, 8 s here, at the next restore sweep) and a replacement starts. Every event must be applied, none
twice.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.listener.conftest import wait_for
from tests.support.pipeline import Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def test_kill_9_of_a_pool_child_and_of_a_whole_worker_loses_nothing(pipeline: Pipeline) -> None:
    p = pipeline
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
    counts = p.account("1 kill -9 worker child + whole worker", window=True)
    assert_nothing_lost(p, counts)
