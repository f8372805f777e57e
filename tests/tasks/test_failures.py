"""Transient cache outages are retried; exhaustion and permanent errors are dead-lettered; replay applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from proxysync import constants as C
from tests.tasks.conftest import Harness, spool_files, wait_until

BIN = Path(sys.executable).parent


def _key(tag: str) -> tuple[str, str]:
    u = uuid.uuid4().hex[:8]
    return f"t-{u}", f"t-{u}#a-{u}#/api/{tag}#CONFIG#production"


def proxysync_cli(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``proxysync`` command against this session's broker and cache."""
    env = {**os.environ, **h.broker.env(), "CACHE_REDIS_URL": h.server.url, "CACHE_PREFIX": h.prefix}
    return subprocess.run([str(BIN / "proxysync"), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_transient_outage_is_retried_until_applied(h: Harness) -> None:
    # Given a cached entry, saved so it survives a restart of the cache Redis
    _, key = _key("outage")
    h.cache.put(key, {"v": 1})
    h.client.save()
    # When the cache Redis goes away and a delete is sent
    h.server.stop()
    ev = h.send(C.TASK_DELETE, key=key)
    wait_until(lambda: h.outcomes.retries[ev] >= 1, what="a retry after the outage")
    # ... and comes back
    h.server.start()
    # Then a retry applies it, once
    [result] = h.outcomes.wait_done(ev)
    assert result["removed"] == 1
    assert h.cache.get(key) is None
    assert len(h.feed(ev)) == 1
    assert not h.outcomes.failures[ev]


def test_exhausted_retries_dead_letter_then_replay_applies(h: Harness) -> None:
    # Given an entry, and the cache Redis down for longer than every retry
    _, key = _key("exhaust")
    h.cache.put(key, {"v": 1})
    h.client.save()
    before = set(spool_files(h.settings))
    h.server.stop()
    ev = h.send(C.TASK_DELETE, key=key)
    # When the retries are used up (max_retries=3, 1 s apart)
    wait_until(lambda: h.outcomes.failures[ev], what="the task to give up")
    assert h.outcomes.retries[ev] == h.settings.task_max_retries
    # Then the dead letter waits in the local spool (its stream is on the Redis that is down) ...
    spooled = set(spool_files(h.settings)) - before
    assert len(spooled) == 1
    assert json.loads(next(iter(spooled)).read_text())["task_id"] == ev
    # ... and reaches the dead stream with the next task once Redis is back
    h.server.start()
    nudge = h.send(C.TASK_DELETE, key=key.replace("exhaust", "nudge"))
    h.outcomes.wait_done(nudge)
    [letter] = [d for d in h.dead() if d["task_id"] == ev]
    assert letter["task"] == C.TASK_DELETE and letter["reason"] == "exhausted"
    assert int(letter["attempts"]) == h.settings.task_max_retries + 1
    assert json.loads(letter["kwargs"])["key"] == key and "CacheUnavailableError" in letter["error"]
    assert h.cache.get(key) == {"v": 1}  # nothing was applied
    # When an operator lists and replays it
    listed = proxysync_cli(h, "dead", "list")
    assert listed.returncode == 0, listed.stderr
    assert ev in listed.stdout and "reason=exhausted" in listed.stdout
    print(listed.stdout)
    replayed = proxysync_cli(h, "dead", "replay", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {letter['id']}" in replayed.stdout
    print(replayed.stdout)
    # Then the worker applies it, and the letter is gone
    results = h.outcomes.wait_done(ev)
    assert results[-1]["removed"] == 1
    assert h.cache.get(key) is None
    assert len(h.feed(ev)) == 1
    assert not [d for d in h.dead() if d["task_id"] == ev]


def test_permanent_error_is_dead_lettered_at_once(h: Harness) -> None:
    # A key outside the key model can never be applied: no retry, one dead letter
    ev = h.send(C.TASK_DELETE, key="not-a-key")
    wait_until(lambda: h.outcomes.failures[ev], what="the task to fail")
    assert h.outcomes.retries[ev] == 0
    letter = wait_until(lambda: [d for d in h.dead() if d["task_id"] == ev], what="the dead letter")[0]
    assert letter["reason"] == "permanent" and letter["attempts"] == "1"
    assert "InvalidKeyError" in letter["error"]


def test_missing_argument_is_dead_lettered(h: Harness) -> None:
    ev = h.send(C.TASK_CLEAR, tenant_id="t-1")  # no app_id
    wait_until(lambda: h.outcomes.failures[ev], what="the task to fail")
    letter = wait_until(lambda: [d for d in h.dead() if d["task_id"] == ev], what="the dead letter")[0]
    assert letter["reason"] == "permanent" and "app_id" in letter["error"]


def test_replay_all_of_an_applied_event_is_a_duplicate(h: Harness) -> None:
    # Given a dead letter whose event was applied meanwhile (e.g. sent again by the listener)
    _, key = _key("dup")
    h.cache.put(key, {"v": 1})
    ev = h.send(C.TASK_DELETE, key=key)
    h.outcomes.wait_done(ev)
    from tasks.deadletter import DeadLetter, write

    write(h.client, h.prefix, DeadLetter(task=C.TASK_DELETE, task_id=ev, reason="exhausted", error="x",
                                         attempts=4, kwargs={"key": key, "event_id": ev}))
    h.cache.put(key, {"v": 2})
    # When every letter is replayed
    out = proxysync_cli(h, "dead", "replay", "--all")
    assert out.returncode == 0, out.stderr
    # Then the worker skips it as a duplicate: the newer value stays
    assert h.outcomes.wait_done(ev, n=2)[-1]["duplicate"] is True
    assert h.cache.get(key) == {"v": 2}
    assert h.dead() == [] or all(d["task_id"] != ev for d in h.dead())


def test_poison_message_is_dead_lettered_not_run(h: Harness) -> None:
    # Given a message whose three earlier deliveries each died with their worker process (counter left behind)
    from tasks.base import deliveries_key

    _, key = _key("poison")
    h.cache.put(key, {"v": 1})
    ev = f"ev-poison-{uuid.uuid4().hex[:8]}"
    h.client.set(deliveries_key(h.prefix, ev, 0), h.settings.task_max_deliveries)
    # When it is delivered once more
    h.send(C.TASK_DELETE, key=key, event_id=ev)
    [result] = h.outcomes.wait_done(ev)
    # Then it is not run again but dead-lettered as poison, and the counter is cleared for a replay
    assert result == {"dead": True}
    assert h.cache.get(key) == {"v": 1} and not h.feed(ev)
    [letter] = [d for d in h.dead() if d["task_id"] == ev]
    assert letter["reason"] == "poison" and "delivered 4 times" in letter["error"]
    assert not h.client.exists(deliveries_key(h.prefix, ev, 0))
