"""Each task's effect on a seeded cache, through a real worker (Redis broker, then RabbitMQ)."""

from __future__ import annotations

import time
import uuid

from cache import Op
from proxysync import constants as C
from tests.tasks.conftest import Harness, wait_until


def _ids() -> tuple[str, str]:
    u = uuid.uuid4().hex[:8]
    return f"t-{u}", f"a-{u}"


def _seed(h: Harness, tenant: str, app: str, n: int, *, service: str | None = None) -> list[str]:
    keys = [f"{tenant}#{app}#/api/p{i}#CONFIG#production" for i in range(n)]
    for k in keys:
        h.cache.put(k, {"route": k}, service=service)
    return keys


def test_clear_drops_tenant_app_and_announces(h: Harness) -> None:
    # Given entries of two apps of one tenant
    tenant, app = _ids()
    keys = _seed(h, tenant, app, 3)
    other = _seed(h, tenant, app + "x", 1)
    # When a clear for one app is sent
    t0 = time.time()
    ev = h.send(C.TASK_CLEAR, tenant_id=tenant, app_id=app, event_time=t0)
    [result] = h.outcomes.wait_done(ev)
    # Then that app's entries are gone, the other's stay, and one feed entry says so
    assert result["removed"] == 3 and result["duplicate"] is False
    assert all(h.cache.get(k) is None for k in keys)
    assert h.cache.get(other[0]) == {"route": other[0]}
    [entry] = h.feed(ev)
    assert (entry.op, entry.tenant_id, entry.app_id, entry.removed) == (Op.CLEAR, tenant, app, 3)
    assert float(entry.extra["event_time"]) == t0


def test_delete_drops_one_key(h: Harness) -> None:
    tenant, app = _ids()
    keys = _seed(h, tenant, app, 2)
    ev = h.send(C.TASK_DELETE, key=keys[0])
    [result] = h.outcomes.wait_done(ev)
    assert result["removed"] == 1
    assert h.cache.get(keys[0]) is None and h.cache.get(keys[1]) is not None
    [entry] = h.feed(ev)
    assert (entry.op, entry.key, entry.removed) == (Op.DELETE, keys[0], 1)


def test_clear_service_drops_tenant_service(h: Harness) -> None:
    tenant, app = _ids()
    paid = _seed(h, tenant, app, 2, service="stripe_payment")
    plain = _seed(h, tenant, app + "y", 1)
    ev = h.send(C.TASK_CLEAR_SERVICE, tenant_id=tenant, service_name="stripe_payment")
    [result] = h.outcomes.wait_done(ev)
    assert result["removed"] == 2
    assert all(h.cache.get(k) is None for k in paid) and h.cache.get(plain[0]) is not None
    [entry] = h.feed(ev)
    assert (entry.op, entry.service_name, entry.removed) == (Op.CLEAR_SERVICE, "stripe_payment", 2)


def test_invalidate_all_drops_everything_and_reclaims(h: Harness) -> None:
    tenant, app = _ids()
    keys = _seed(h, tenant, app, 5)
    epoch = h.cache.epoch()
    ev = h.send(C.TASK_INVALIDATE_ALL)
    [result] = h.outcomes.wait_done(ev)
    assert result["removed"] >= 5 and result["reclaimed"] >= 5
    assert h.cache.count() == 0 and h.cache.epoch() == epoch + 1
    assert all(h.cache.get(k) is None for k in keys)
    assert h.cache.pending_reclaim() == 0  # the old epoch's space is freed, not just hidden
    assert not list(h.client.scan_iter(match=f"{h.prefix}:e:{epoch}:*"))
    [entry] = h.feed(ev)
    assert entry.op == Op.INVALIDATE_ALL


def test_duplicate_event_is_applied_once(h: Harness) -> None:
    # Given an applied clear
    tenant, app = _ids()
    _seed(h, tenant, app, 2)
    ev = h.send(C.TASK_CLEAR, tenant_id=tenant, app_id=app)
    h.outcomes.wait_done(ev)
    # When the same event arrives again (a second listener, a redelivery) after new entries were written
    again = _seed(h, tenant, app, 2)
    h.send(C.TASK_CLEAR, tenant_id=tenant, app_id=app, event_id=ev)
    first, second = h.outcomes.wait_done(ev, n=2)
    # Then it is skipped: the new entries stay and the feed holds one entry for the event
    assert first["duplicate"] is False and second["duplicate"] is True
    assert all(h.cache.get(k) is not None for k in again)
    assert len(h.feed(ev)) == 1


def test_feed_entries_carry_event_and_timing(h: Harness) -> None:
    tenant, app = _ids()
    sent = [h.send(C.TASK_CLEAR, tenant_id=tenant, app_id=f"{app}{i}", event_time=time.time() - 1.5)
            for i in range(3)]
    for ev in sent:
        h.outcomes.wait_done(ev)
    entries = [e for e in h.feed() if e.event_id in sent]
    assert [e.event_id for e in entries] == sent  # one each, in the order applied
    for e in entries:
        # event_time is the event's own time (1.5 s before sending); applied_at is the cache Redis's clock
        assert e.applied_at_ms / 1000 - float(e.extra["event_time"]) >= 1.0
        assert e.removed == 0 and e.tenant_id == tenant


def test_pickle_message_is_refused_and_dead_lettered(h: Harness) -> None:
    # Given a message in a content type other than JSON (pickle runs code when loaded)
    tenant, app = _ids()
    [key] = _seed(h, tenant, app, 1)
    ev = f"ev-pickle-{uuid.uuid4().hex[:8]}"
    h.app.send_task(C.TASK_DELETE, kwargs={"key": key, "event_id": ev}, task_id=ev, serializer="pickle")
    # When the worker has received it (it handles a JSON task sent after it)
    after = h.send(C.TASK_DELETE, key=f"{tenant}#{app}#/other#CONFIG#production")
    h.outcomes.wait_done(after)
    # Then it was never run, and a dead letter says why
    letter = wait_until(lambda: [d for d in h.dead() if d["task_id"] == ev], what="the dead letter")[0]
    assert letter["reason"] == "refused" and "ContentDisallowed" in letter["error"]
    assert h.cache.get(key) == {"route": key}
    assert ev not in h.outcomes.done and not h.feed(ev)


def test_unknown_task_name_is_dead_lettered_with_its_arguments(h: Harness) -> None:
    ev = f"ev-unknown-{uuid.uuid4().hex[:8]}"
    h.app.send_task("proxysync.cache.no_such_task", kwargs={"event_id": ev}, task_id=ev,
                    queue=h.app.conf.task_default_queue)
    letter = wait_until(lambda: [d for d in h.dead() if d["task_id"] == ev], what="the dead letter")[0]
    assert letter["reason"] == "unknown" and '"event_id"' in letter["kwargs"]


def test_message_that_is_not_a_task_is_dead_lettered(h: Harness) -> None:
    # Given a JSON message on the queue that is not a Celery task at all
    queue = h.app.conf.task_default_queue
    marker = f"not-a-task-{uuid.uuid4().hex[:8]}"
    with h.app.producer_or_acquire() as producer:
        producer.publish({"hello": marker}, serializer="json", exchange=queue, routing_key=queue,
                         headers={"id": marker})
    # Then the worker drops it, with a dead letter saying so
    letter = wait_until(lambda: [d for d in h.dead() if d["task_id"] == marker], what="the dead letter")[0]
    assert letter["reason"] == "refused" and "not a Celery task message" in letter["error"]
