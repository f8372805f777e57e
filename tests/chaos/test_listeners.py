"""Fault 5: two listeners on one topic, one killed with ``kill -9`` mid-stream.

Both receive every event and both send it, under the same task id (the event id); the worker's
idempotency (``event_id``) makes the second delivery a no-op. When one listener dies the other carries on
alone. Every event must be applied once in effect (one feed entry), none lost.
"""

from __future__ import annotations

import pytest

from tests.support.pipeline import Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def test_two_listeners_one_killed_every_event_applied_once(pipeline: Pipeline) -> None:
    p = pipeline
    # Given two listeners subscribed to the same topic and one worker
    p.start_worker(concurrency=2)
    first = p.start_listener()
    second = p.start_listener()
    # When 400 events flow and the first listener is killed at about a third of them
    stream = p.stream(400, rate=150)
    stream.wait_published(130)
    first.kill9()
    stream.join()
    # Then every event is applied exactly once in effect; the survivor never reconnected
    p.wait_applied(40)
    counts = p.account("5 two listeners, one kill -9", window=True)
    assert_nothing_lost(p, counts)
    assert second.alive() and p.metric(second, "proxysync_listener_reconnects_total") == 0
    assert counts.redelivered > 0, "both listeners sent the events they received before the kill"
