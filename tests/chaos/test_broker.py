"""Fault 2: the Redis that serves as Celery broker restarts while events flow.

The broker is a redis-server of the test's own (never the machine's), stopped with SIGTERM (it saves its
data, as a production broker with persistence would) and started again on the same port after a pause. While
it is down the listener spools to disk; afterwards it replays in order, and the worker must resume consuming.
Celery's best-known failure is a worker that silently stops consuming after a Redis reconnect: events sent
only *after* the restart prove the worker is consuming again, and the failure message says so if not.
"""

from __future__ import annotations

import pytest

from tests.support.pipeline import Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def test_broker_redis_restart_spools_replays_and_workers_resume(pipeline: Pipeline) -> None:
    p = pipeline
    # Given a listener and a worker on the private broker Redis
    worker = p.start_worker(concurrency=1)
    listener = p.start_listener()
    # When the broker restarts (down 3 s) in the middle of 800 events
    stream = p.stream(800, rate=200)
    stream.wait_published(200)
    p.restart_broker(down_s=3.0)
    stream.join()
    # Then the listener spooled while it was down and replayed everything afterwards
    assert p.metric(listener, "proxysync_listener_spooled_total") > 0, p.diagnose()
    # And events published only after the restart are applied too: the worker consumes again
    late = {f"late-{p.tag}-{i}" for i in range(20)}
    for event_id in sorted(late):
        p.publish_event(event_id, key=p.key(0))
    consuming = p.wait_applied(40, ids=late) and p.wait_applied(20)
    counts = p.account("2 broker Redis restart (3 s down)", window=True)
    assert consuming, (f"events sent after the broker restart were not applied: the worker (alive="
                       f"{worker.alive()}) silently stopped consuming after the Redis reconnect\n"
                       f"{p.diagnose()}")
    assert_nothing_lost(p, counts)
    assert listener.alive() and p.metric(listener, "proxysync_listener_spool_depth") == 0
