"""Route-refresh coalescing: the Redis state machine directly, then a burst through the real worker."""

from __future__ import annotations

import time

import redis

from cache import Op, RouteAuthCache
from proxysync import constants as C
from tasks.coalesce import Coalescer, pending_key, trail_id, window_key
from tests.tasks.conftest import Harness, wait_until


def _announce(cache: RouteAuthCache, event_id: str) -> None:
    cache.apply(Op.ROUTES_REFRESH, event_id=event_id)


def test_first_request_leads_the_rest_fold_into_one_trailing(redis_client: redis.Redis, prefix: str) -> None:
    c = Coalescer(redis_client, prefix, window=5.0)
    cache = RouteAuthCache(redis_client, prefix=prefix)
    # Given a leading refresh, announced
    assert c.request("r1", 1.0).action == "lead"
    _announce(cache, "r1")
    # When more requests arrive inside the window
    second = c.request("r2", 2.0)
    rest = [c.request(f"r{i}", float(i)).action for i in range(3, 10)]
    # Then the first of them schedules the trailing refresh for when the window closes, the rest just fold in
    assert second.action == "schedule" and 0 < second.delay <= 5.0
    assert set(rest) == {"coalesced"}
    # And the trailing refresh claims them all (the earliest request time, and how many)
    trail = c.flush(trail_id("r2"), "r2")
    assert (trail.action, trail.event_time, trail.folded) == ("trail", 2.0, 8)
    assert redis_client.get(window_key(prefix)) == trail_id("r2").encode()  # it opened the next window
    assert not redis_client.exists(pending_key(prefix))


def test_redeliveries_are_idempotent(redis_client: redis.Redis, prefix: str) -> None:
    c = Coalescer(redis_client, prefix, window=5.0)
    cache = RouteAuthCache(redis_client, prefix=prefix)
    assert c.request("r1", 1.0).action == "lead"
    assert c.request("r1", 1.0).action == "lead"  # redelivered before it announced: still the leader
    _announce(cache, "r1")
    assert c.request("r1", 1.0).action == "duplicate"  # redelivered after: nothing to do
    assert c.request("r2", 2.0).action == "schedule"
    assert c.request("r2", 2.0).action == "schedule"  # same deterministic trailing id: announced once
    t = trail_id("r2")
    assert c.flush(t, "r2").action == "trail"
    assert c.flush(t, "r2").action == "trail"  # claimed but not announced yet: a redelivery still announces
    _announce(cache, t)
    assert c.flush(t, "r2").action == "duplicate"


def test_a_new_leader_covers_pending_requests(redis_client: redis.Redis, prefix: str) -> None:
    # Given a folded request whose trailing refresh is late (the window already expired)
    c = Coalescer(redis_client, prefix, window=0.05)
    assert c.request("r1", 1.0).action == "lead"
    assert c.request("r2", 2.0).action == "schedule"
    wait_until(lambda: not redis_client.exists(window_key(prefix)), 5, "the window to close")
    # When a new request leads (its announcement comes after r2 was requested, so it covers r2)
    assert c.request("r3", 3.0).action == "lead"
    # Then the late trailing refresh finds nothing left to announce
    assert c.flush(trail_id("r2"), "r2").action == "idle"


def test_burst_through_the_worker_gives_at_most_two_feed_entries(h: Harness) -> None:
    # Given no refresh window open
    wait_until(lambda: not h.client.exists(window_key(h.prefix)), 10, "an idle refresh window")
    # When a burst of refresh requests arrives (the window is 3 s in this suite)
    sent = [h.send(C.TASK_ROUTES_REFRESH) for _ in range(20)]
    for ev in sent:
        h.outcomes.wait_done(ev)
    last_processed_ms = time.time() * 1000
    actions = [h.outcomes.done[ev][0].get("action", "lead") for ev in sent]
    # Then one led, and the trailing refresh the first folded one scheduled announces after all of them
    assert actions[0] == "lead" and actions.count("schedule") == 1
    folded_owner = sent[actions.index("schedule")]
    trail = trail_id(folded_owner)
    h.outcomes.wait_done(trail, timeout=30)
    entries = [e for e in h.feed() if e.op == Op.ROUTES_REFRESH and e.event_id in {sent[0], trail}]
    assert [e.extra["edge"] for e in entries] == ["leading", "trailing"]
    assert int(entries[1].extra["coalesced"]) == 19
    assert entries[1].applied_at_ms >= last_processed_ms - 5  # never lost: announced after the last request
    refreshes = [e for e in h.feed() if e.op == Op.ROUTES_REFRESH and e.event_id in {*sent, trail}]
    assert len(refreshes) == 2
    assert not h.client.exists(pending_key(h.prefix))  # nothing left waiting

