"""Delivery confirmation against the real Redis: what a worker started is forgotten, what the broker lost
(overtaken by a later task, or idle too long) is sent again, a task nobody ever starts is given up."""

from __future__ import annotations

import pytest
import redis

from cache.names import done_key, seen_key
from listener.confirm import Confirmations
from proxysync.events import TaskCall


def call(i: int, queue: str = "invalidations") -> TaskCall:
    return TaskCall(name="proxysync.cache.delete", kwargs={"key": f"t#a#/p{i}#CONFIG#prod"},
                    task_id=f"ev-{i}", queue=queue)


def started(r: redis.Redis, prefix: str, *ids: int) -> None:
    for i in ids:
        r.set(seen_key(prefix, f"ev-{i}"), 1, ex=60)


def test_started_or_applied_tasks_are_confirmed_and_forgotten(redis_client: redis.Redis, prefix: str) -> None:
    # Given three tasks sent, one started by a worker, one applied
    c = Confirmations(redis_client, prefix=prefix, grace=5.0, min_age=1.0)
    for i in range(3):
        c.track(call(i), now=0.0)
    started(redis_client, prefix, 0)
    redis_client.set(done_key(prefix, "ev-1"), 1, ex=60)
    # When a confirmation round runs
    assert c.due(now=2.0) == []
    # Then only the unconfirmed one is still awaited
    assert len(c) == 1


def test_a_task_overtaken_by_a_later_started_one_is_sent_again_after_grace(
        redis_client: redis.Redis, prefix: str) -> None:
    # Given tasks 0..4 sent in order, and a worker started 0, 2, 3, 4 but never 1 (the broker lost it)
    c = Confirmations(redis_client, prefix=prefix, grace=5.0, min_age=1.0)
    for i in range(5):
        c.track(call(i), now=float(i) * 0.01)
    started(redis_client, prefix, 0, 2, 3, 4)
    # When rounds run: first it is only noticed as overtaken, then the grace runs out
    assert c.due(now=2.0) == []
    assert c.due(now=6.0) == []
    resent = c.due(now=7.5)
    # Then exactly the lost one is sent again, with its own task id
    assert [x.task_id for x in resent] == ["ev-1"]
    assert c.resent == 1
    # And once the broker takes it again it is awaited again, its attempt counted
    c.track(resent[0], now=7.5)
    assert len(c) == 1


def test_a_backlog_is_not_resent_while_nothing_after_it_started(
        redis_client: redis.Redis, prefix: str) -> None:
    # Given 50 tasks waiting in a queue no worker consumes yet (a backlog), and a long idle limit
    c = Confirmations(redis_client, prefix=prefix, grace=1.0, idle_after=600.0, min_age=1.0, scan_limit=10)
    for i in range(50):
        c.track(call(i), now=0.0)
    # When rounds run long past the grace
    for t in (2.0, 5.0, 30.0):
        # Then nothing is resent: none was overtaken
        assert c.due(now=t) == []
    assert c.resent == 0 and len(c) == 50


def test_other_queues_do_not_overtake(redis_client: redis.Redis, prefix: str) -> None:
    # Given a refresh that waits in the routes queue while invalidations after it were started
    c = Confirmations(redis_client, prefix=prefix, grace=1.0, idle_after=600.0, min_age=0.5)
    c.track(call(0, queue="routes"), now=0.0)
    c.track(call(1), now=0.1)
    started(redis_client, prefix, 1)
    # When rounds run past the grace, then the refresh is not resent: its queue is another FIFO
    assert c.due(now=1.0) == [] and c.due(now=5.0) == []


def test_the_last_task_is_resent_once_idle_and_given_up_after_max_attempts(
        redis_client: redis.Redis, prefix: str) -> None:
    # Given one task that no worker ever starts
    c = Confirmations(redis_client, prefix=prefix, grace=1.0, idle_after=3.0, min_age=0.5, max_attempts=3,
                      queue_depth=lambda q: 0)
    c.track(call(7), now=0.0)
    now = 0.0
    sends = 1
    # When rounds keep running and every re-send is accepted by the broker
    for _ in range(20):
        now += 1.0
        for again in c.due(now):
            sends += 1
            c.track(again, now)
    # Then it was sent max_attempts times in all, then given up (loudly) and forgotten
    assert sends == 3
    assert c.given_up == 1 and len(c) == 0


def test_a_last_task_still_waiting_in_its_queue_is_not_resent(redis_client: redis.Redis, prefix: str) -> None:
    # Given the last task sent, unstarted long past the idle limit, but its queue still holds messages
    depth = {"invalidations": 2000}
    c = Confirmations(redis_client, prefix=prefix, grace=1.0, idle_after=3.0, min_age=0.5,
                      queue_depth=depth.get)
    c.track(call(1), now=0.0)
    # Then it is not resent: it is waiting, not lost
    assert c.due(now=100.0) == []
    # And once the queue is empty and it still never started, it is
    depth["invalidations"] = 0
    assert [x.task_id for x in c.due(now=101.0)] == ["ev-1"]


def test_without_queue_evidence_a_last_task_waits_to_be_overtaken(
        redis_client: redis.Redis, prefix: str) -> None:
    # Given a broker that cannot say what waits (AMQP: no BRPOP window there anyway)
    c = Confirmations(redis_client, prefix=prefix, grace=1.0, idle_after=3.0, min_age=0.5, queue_depth=None)
    c.track(call(1), now=0.0)
    # Then a last unstarted task is never resent on idleness alone
    assert c.due(now=1000.0) == []


def test_the_ledger_is_bounded_and_says_so_without_flooding(
        redis_client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given a ledger bounded at 10 tasks
    c = Confirmations(redis_client, prefix=prefix, max_tracked=10)
    # When 1000 tasks are sent that nobody confirms
    for i in range(1000):
        c.track(call(i), now=0.0)
    # Then it keeps the newest 10, and said so a handful of times, not 990
    assert len(c) == 10 and c.untracked == 990
    lines = [r for r in caplog.records if "await confirmation" in r.getMessage()]
    assert 1 <= len(lines) <= 10


def test_cache_redis_away_pauses_confirmation_without_resending(prefix: str) -> None:
    # Given a cache Redis that does not answer
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    c = Confirmations(dead, prefix=prefix, grace=0.1, idle_after=0.1, min_age=0.0)
    c.track(call(1), now=0.0)
    # When a round runs long after every limit, then nothing is resent blind, and nothing is forgotten
    assert c.due(now=100.0) == []
    assert len(c) == 1 and c.resent == 0
