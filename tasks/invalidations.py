"""The task functions, registered by name on an app by :func:`register`.

Each is thin: check its arguments, call the cache library, report what it removed. Keyword arguments are the
contract in DESIGN.md (``tenant_id``, ``app_id``, ``key``, ``service_name``, ``event_id``, ``event_time``).

Why running any of them twice leaves the same state as running it once: ``RouteAuthCache.apply`` sets the
event's applied-marker, makes the change and appends the feed entry in one Lua script, and does nothing when
the marker is already there. A redelivered message or a second listener sending the same event is skipped as a
duplicate; and even without the marker a second removal removes nothing more.
"""

from __future__ import annotations

import logging
from typing import Any

from cache import Op
from cache.store import redis_errors
from proxysync import constants as C
from tasks.base import ProxysyncTask, check_time
from tasks.coalesce import Coalescer, trail_id, trail_key
from tasks.metrics import metrics

log = logging.getLogger(__name__)


def clear(self: ProxysyncTask, *, tenant_id: str, app_id: str, event_id: str | None = None,
          event_time: float | None = None) -> dict[str, Any]:
    """Drop every entry of tenant+app. Idempotent: see the module docstring."""
    return self.apply_change(Op.CLEAR, event_id=event_id, event_time=event_time, tenant_id=tenant_id,
                             app_id=app_id)


def delete(self: ProxysyncTask, *, key: str, event_id: str | None = None,
           event_time: float | None = None) -> dict[str, Any]:
    """Drop one key. Idempotent: see the module docstring."""
    return self.apply_change(Op.DELETE, event_id=event_id, event_time=event_time, key=key)


def clear_service(self: ProxysyncTask, *, tenant_id: str, service_name: str, event_id: str | None = None,
                  event_time: float | None = None) -> dict[str, Any]:
    """Drop every entry of tenant+service. Idempotent: see the module docstring."""
    return self.apply_change(Op.CLEAR_SERVICE, event_id=event_id, event_time=event_time, tenant_id=tenant_id,
                             service_name=service_name)


def invalidate_all(self: ProxysyncTask, *, event_id: str | None = None,
                   event_time: float | None = None) -> dict[str, Any]:
    """Drop everything (an O(1) epoch bump), then reclaim the old epochs' space.

    Idempotent: the epoch bump is deduplicated like every change; reclaiming runs every time (also for a
    duplicate or a retry) and frees only space nothing can read any more, so repeating it is harmless.
    """
    out = self.apply_change(Op.INVALIDATE_ALL, event_id=event_id, event_time=event_time)
    if not out.get("dead"):
        out["reclaimed"] = self.runtime.cache.reclaim()
    return out


def refresh(self: ProxysyncTask, *, event_id: str | None = None, event_time: float | None = None,
            coalesced_for: str | None = None) -> dict[str, Any]:
    """Tell every gateway to reload its routes, coalesced: at most a leading and a trailing announcement per
    ``ROUTES_COALESCE_WINDOW`` (see :mod:`tasks.coalesce`).

    Idempotent: an announced refresh is marked applied like any event; a request folded into a trailing
    refresh schedules that trailing task under a deterministic id, so scheduling it again announces once.
    ``coalesced_for`` is set only on the trailing task the worker schedules itself.
    """
    rt = self.runtime
    event_id = event_id or str(self.request.id)
    t = check_time(event_time)
    coalescer = Coalescer(rt.redis, rt.prefix, window=rt.settings.routes_coalesce_window)
    with self.delivery() as poison:
        if poison:
            return {"dead": True}
        if coalesced_for is None:
            decision = coalescer.request(event_id, t)
        else:
            decision = coalescer.flush(event_id, coalesced_for)
        if decision.action == "lead":
            return self.apply_now(Op.ROUTES_REFRESH, event_id=event_id, event_time=t,
                                  feed_fields={"edge": "leading"})
        if decision.action == "trail":
            out = self.apply_now(Op.ROUTES_REFRESH, event_id=event_id, event_time=decision.event_time or t,
                                 feed_fields={"edge": "trailing", "coalesced": str(decision.folded)})
            with redis_errors("routes refresh (trailing)"):
                rt.redis.delete(trail_key(rt.prefix, event_id))
            return out
    if decision.action == "schedule":
        trail = trail_id(event_id)
        self.app.send_task(C.TASK_ROUTES_REFRESH, task_id=trail, countdown=decision.delay,
                           kwargs={"event_id": trail, "event_time": t, "coalesced_for": event_id})
        log.info("%s event=%s folded into trailing refresh %s in %.3fs", self.name, event_id, trail,
                 decision.delay)
    if decision.action in ("schedule", "coalesced"):
        metrics().coalesced.inc()
    return {"action": decision.action}

TASKS = {
    C.TASK_CLEAR: clear,
    C.TASK_DELETE: delete,
    C.TASK_CLEAR_SERVICE: clear_service,
    C.TASK_INVALIDATE_ALL: invalidate_all,
    C.TASK_ROUTES_REFRESH: refresh,
}
