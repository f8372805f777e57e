"""Redis names and feed vocabulary: a wire contract, declared once.

Everything lives under one prefix (``proxysync`` by default)::

    {p}:epoch                       current epoch (invalidate_all bumps it: O(1))
    {p}:seq                         invalidation sequence number (stale-fill guard)
    {p}:ix:{epoch}:h:{tenant}#{app}   hash key -> "expiry_ms|inf TAB service TAB json": the scope's entries
                                      (clear(tenant, app) UNLINKs it whole: O(1) commands)
    {p}:ix:{epoch}:x:{tenant}#{app}   zset key -> expiry ms (+inf without TTL): live count, pruning
    {p}:ix:{epoch}:s:{tenant}#{app}   set of the services present in the scope
    {p}:ix:{epoch}:tas:{tenant}#{app}#{service}  zset key -> expiry: the scope's entries of one service
    {p}:ix:{epoch}:ts:{tenant}#{service}         set of the tenant+app scopes holding the service
    {p}:ix:{epoch}:tas              set of the epoch's tenant+app scopes (count)
    {p}:ix:{epoch}:n                entries stored in the epoch (invalidate_all's count, without a walk)
    {p}:ix:{epoch}:names            set of every structure name of the epoch (reclaim)
    {p}:inv:k:{key} / inv:ta:{t}#{a} / inv:ts:{t}#{s}   seq of the scope's last invalidation (short TTL)
    {p}:reclaim                     set of old epochs whose space is still to be reclaimed
    {p}:done:{event_id}             idempotency marker of an applied event
    {p}:seen:{task_id}              a worker started the task (short TTL): the listener confirms delivery
    {p}:feed                        stream: one entry per applied change (the invalidation feed)
    {p}:dead                        stream: dead letters
"""

from __future__ import annotations

from enum import StrEnum

DEFAULT_PREFIX = "proxysync"


class Op(StrEnum):
    """The ``op`` field of a feed entry: what a change covered."""

    DELETE = "delete"
    CLEAR = "clear"
    CLEAR_SERVICE = "clear_service"
    INVALIDATE_ALL = "invalidate_all"
    ROUTES_REFRESH = "routes_refresh"


# Feed entry field names.
F_OP = "op"
F_TENANT = "tenant_id"
F_APP = "app_id"
F_KEY = "key"
F_SERVICE = "service_name"
F_EVENT_ID = "event_id"
F_EVENT_TIME = "event_time"
F_APPLIED_AT = "applied_at"
F_REMOVED = "removed"


def feed_stream(prefix: str) -> str:
    return f"{prefix}:feed"


def dead_stream(prefix: str) -> str:
    return f"{prefix}:dead"


def epoch_key(prefix: str) -> str:
    return f"{prefix}:epoch"


def done_key(prefix: str, event_id: str) -> str:
    return f"{prefix}:done:{event_id}"


SEEN_TTL_S = 600  # long enough for the listener to confirm a start it asks about seconds later


def seen_key(prefix: str, task_id: str) -> str:
    """Set by a worker when it starts a task; read by the listener to confirm the broker delivered it."""
    return f"{prefix}:seen:{task_id}"
