"""The Messenger event: the one definition the listener and the tasks share.

A frame body looks like (the original's format)::

    {"payload": {"type": "CACHE_CLEAR_INVALID", "tenantId": "tenant-123", "appId": "app-456",
                 "key": "tenant-123#app-456#/api/payment#CONFIG#production", "serviceName": "stripe_payment"},
     "timestamp": "2024-01-15T10:30:00Z", "source": "config-manager"}

:func:`parse_event` turns a body into a validated :class:`MessengerEvent` or raises :class:`EventError` whose
``reason`` is a short label (for counters) and whose message says what was wrong. :func:`task_call` maps an
event to the Celery task it becomes. Both are pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cache.errors import InvalidKeyError
from cache.keys import CacheKey, validate_id
from proxysync import constants as C


class EventType(StrEnum):
    CACHE_CLEAR_INVALID = "CACHE_CLEAR_INVALID"
    CACHE_DELETE_INVALID = "CACHE_DELETE_INVALID"
    ALL_CACHE_INVALID = "ALL_CACHE_INVALID"
    CACHE_CLEAR_SERVICE_INVALID = "CACHE_CLEAR_SERVICE_INVALID"
    ROUTES_REFRESH = "ROUTES_REFRESH"


# What each type needs, and the task it becomes: declared once, as data.
REQUIRED: dict[EventType, tuple[str, ...]] = {
    EventType.CACHE_CLEAR_INVALID: ("tenantId", "appId"),
    EventType.CACHE_DELETE_INVALID: ("key",),
    EventType.ALL_CACHE_INVALID: (),
    EventType.CACHE_CLEAR_SERVICE_INVALID: ("tenantId", "serviceName"),
    EventType.ROUTES_REFRESH: (),
}
TASK_OF: dict[EventType, str] = {
    EventType.CACHE_CLEAR_INVALID: C.TASK_CLEAR,
    EventType.CACHE_DELETE_INVALID: C.TASK_DELETE,
    EventType.ALL_CACHE_INVALID: C.TASK_INVALIDATE_ALL,
    EventType.CACHE_CLEAR_SERVICE_INVALID: C.TASK_CLEAR_SERVICE,
    EventType.ROUTES_REFRESH: C.TASK_ROUTES_REFRESH,
}
QUEUE_OF: dict[str, str] = {name: C.QUEUE_INVALIDATIONS for name in C.ALL_TASKS} | {
    C.TASK_ROUTES_REFRESH: C.QUEUE_ROUTES
}


class EventError(ValueError):
    """A frame body that is not a valid event. ``reason`` labels the counter; the message explains."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Payload(BaseModel):
    """The ``payload`` object. Unknown fields are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: EventType = Field(strict=False)  # a JSON string names the member
    tenantId: str | None = None
    appId: str | None = None
    key: str | None = None
    serviceName: str | None = None
    eventId: str | None = None

    @field_validator("tenantId", "appId", "serviceName", "eventId")
    @classmethod
    def _ids(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else validate_id(v, info.field_name)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None:
            CacheKey.parse(v)
        return v


class MessengerEvent(BaseModel):
    """A whole frame body, validated, with its ``event_id``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    payload: Payload
    timestamp: Any = None  # ISO 8601 string or epoch s/ms, kept as sent (see event_time)
    source: str | None = None
    event_id: str = ""

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str | int | float) and not isinstance(v, bool)):
            return v
        raise ValueError(f"timestamp must be an ISO 8601 string or an epoch number, not {type(v).__name__}")

    @property
    def type(self) -> EventType:
        return self.payload.type

    def event_time(self) -> float | None:
        """The event's own time as epoch seconds, when the Messenger gave one we can read."""
        ts = self.timestamp
        if ts is None or isinstance(ts, bool):
            return None
        if isinstance(ts, int | float):
            if not math.isfinite(ts) or ts <= 0:
                return None  # NaN/Infinity parse as JSON numbers; they are no time
            return float(ts) / 1000.0 if ts > 1e11 else float(ts)  # epoch ms or epoch s
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            return None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    ctx_err = (err.get("ctx") or {}).get("error")
    msg = str(ctx_err) if ctx_err is not None else err.get("msg", "invalid")
    return _short(f"{where}: {msg}" if where else msg, 300)


def _reason_of(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = tuple(str(p) for p in err.get("loc", ()))
    kind = err.get("type", "")
    if loc[:1] == ("payload",) and len(loc) == 1:
        return "no_payload" if kind == "missing" else "wrong_type"
    if loc[-1:] == ("type",):
        return "bad_type"
    if kind == "value_error" and isinstance((err.get("ctx") or {}).get("error"), InvalidKeyError):
        return "bad_id"
    if kind == "missing":
        return "missing_field"
    return "wrong_type"


def canonical_event_id(body: dict[str, Any]) -> str:
    """A stable id for a body that carries none: the hash of its canonical JSON."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: JSON escapes may decode to lone surrogates ("\ud800"); hash them instead of crashing
    return "ev-" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def parse_event(body: bytes | str) -> MessengerEvent:
    """Parse and validate one frame body, or raise :class:`EventError`."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError("not_utf8", f"body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EventError("not_json", f"body is not JSON: {_short(str(exc))}") from None
    if not isinstance(data, dict):
        raise EventError("not_object", f"body is JSON {type(data).__name__}, not an object")
    payload = data.get("payload")
    if payload is None:
        raise EventError("no_payload", "body has no 'payload' object")
    if not isinstance(payload, dict):
        raise EventError("wrong_type", f"'payload' is {type(payload).__name__}, not an object")
    ptype = payload.get("type")
    if ptype is None:
        raise EventError("bad_type", "payload has no 'type'")
    if not isinstance(ptype, str) or ptype not in EventType.__members__:
        raise EventError("bad_type", f"unknown event type {_short(repr(ptype), 80)}")
    try:
        event = MessengerEvent.model_validate(data)
    except ValidationError as exc:
        raise EventError(_reason_of(exc), _first_error(exc)) from None
    for name in REQUIRED[event.type]:
        if getattr(event.payload, name) is None:
            raise EventError("missing_field", f"{event.type.value} needs payload.{name}")
    own = event.payload.eventId or _own_id(data)
    event_id = own or canonical_event_id(data)
    return event.model_copy(update={"event_id": event_id})


def _own_id(data: dict[str, Any]) -> str | None:
    for name in ("eventId", "id"):
        value = data.get(name)
        if isinstance(value, str):
            try:
                return validate_id(value, name)
            except InvalidKeyError as exc:
                raise EventError("bad_id", str(exc)) from None
    return None


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A Celery task to send by name."""

    name: str
    kwargs: dict[str, Any]
    task_id: str
    queue: str  # a suffix: C.QUEUE_INVALIDATIONS or C.QUEUE_ROUTES; the sender resolves C.queue_name(queue)


def task_call(event: MessengerEvent, *, received_at: float) -> TaskCall:
    """The task an event becomes. ``event_time`` is the event's own time, else when we received it."""
    p = event.payload
    name = TASK_OF[event.type]
    kwargs: dict[str, Any] = {
        "event_id": event.event_id,
        "event_time": event.event_time() or received_at,
    }
    if event.type is EventType.CACHE_CLEAR_INVALID:
        kwargs |= {"tenant_id": p.tenantId, "app_id": p.appId}
    elif event.type is EventType.CACHE_DELETE_INVALID:
        kwargs |= {"key": p.key}
    elif event.type is EventType.CACHE_CLEAR_SERVICE_INVALID:
        kwargs |= {"tenant_id": p.tenantId, "service_name": p.serviceName}
    return TaskCall(name=name, kwargs=kwargs, task_id=event.event_id, queue=QUEUE_OF[name])
