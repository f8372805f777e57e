"""Fault 2b: the broker loses messages it had accepted (kombu's BRPOP window, a broker without persistence).

kombu's Redis transport removes a message from the queue (BRPOP) before it records it as unacknowledged, so a
worker killed in between loses it (celery/kombu#305); a broker restarted without persistence loses whole
queues. Both are simulated exactly here: messages are taken off the broker's queue list behind the workers'
back. The listener's delivery confirmation (``listener/confirm.py``) must notice that no worker ever started
them and send them again: every event applied, once in effect.
"""

from __future__ import annotations

import pytest

from proxysync import constants as C
from tests.listener.conftest import wait_for
from tests.support.pipeline import Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def test_messages_the_broker_lost_are_sent_again_and_applied(pipeline: Pipeline) -> None:
    p = pipeline
    # Given a listener and 60 events waiting in the broker's queue (no worker yet)
    listener = p.start_listener()
    queue = C.queue_name(C.QUEUE_INVALIDATIONS, p.queue_prefix)
    broker = p.broker_client()
    for i in range(60):
        p.publish_delete(i, label="lost")
    wait_for(lambda: broker.llen(queue) >= 60 + 1, 30, "60 events (+ the gap resync) queued")
    # When the broker loses 3 of them, the next ones a worker would have taken (RPOP: kombu BRPOPs the tail),
    # and one from the middle, as a crash between BRPOP and the unacked record would
    lost = [broker.rpop(queue) for _ in range(3)]
    middle = broker.lindex(queue, 20)
    assert middle is not None and broker.lrem(queue, 1, middle) == 1
    assert all(lost)
    # And a worker starts consuming what is left
    p.start_worker(concurrency=2)
    # Then every event is applied anyway: the listener saw they never started, and sent them again
    done = p.wait_applied(60)
    counts = p.account("2b broker lost 4 accepted messages", window=True)
    assert done, p.diagnose(counts.missing)
    assert_nothing_lost(p, counts)
    assert p.metric(listener, "proxysync_listener_resent_total") >= 4
    assert p.metric(listener, "proxysync_listener_unconfirmed_total") == 0
