"""proxysync.events: every event type, every rejection reason, the event id, task calls, fuzz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxysync import constants as C
from proxysync.events import (
    EventError,
    EventType,
    MessengerEvent,
    canonical_event_id,
    parse_event,
    task_call,
)

KEY = "tenant-123#app-456#/api/payment#CONFIG#production"
PAYLOADS: dict[EventType, dict[str, Any]] = {
    EventType.CACHE_CLEAR_INVALID: {
        "type": "CACHE_CLEAR_INVALID",
        "tenantId": "tenant-123",
        "appId": "app-456",
    },
    EventType.CACHE_DELETE_INVALID: {"type": "CACHE_DELETE_INVALID", "key": KEY},
    EventType.ALL_CACHE_INVALID: {"type": "ALL_CACHE_INVALID"},
    EventType.CACHE_CLEAR_SERVICE_INVALID: {
        "type": "CACHE_CLEAR_SERVICE_INVALID",
        "tenantId": "tenant-123",
        "serviceName": "stripe_payment",
    },
    EventType.ROUTES_REFRESH: {"type": "ROUTES_REFRESH"},
}
EXPECTED_KWARGS: dict[EventType, dict[str, str]] = {
    EventType.CACHE_CLEAR_INVALID: {"tenant_id": "tenant-123", "app_id": "app-456"},
    EventType.CACHE_DELETE_INVALID: {"key": KEY},
    EventType.ALL_CACHE_INVALID: {},
    EventType.CACHE_CLEAR_SERVICE_INVALID: {"tenant_id": "tenant-123", "service_name": "stripe_payment"},
    EventType.ROUTES_REFRESH: {},
}
EXPECTED_TASK = {
    EventType.CACHE_CLEAR_INVALID: (C.TASK_CLEAR, C.QUEUE_INVALIDATIONS),
    EventType.CACHE_DELETE_INVALID: (C.TASK_DELETE, C.QUEUE_INVALIDATIONS),
    EventType.ALL_CACHE_INVALID: (C.TASK_INVALIDATE_ALL, C.QUEUE_INVALIDATIONS),
    EventType.CACHE_CLEAR_SERVICE_INVALID: (C.TASK_CLEAR_SERVICE, C.QUEUE_INVALIDATIONS),
    EventType.ROUTES_REFRESH: (C.TASK_ROUTES_REFRESH, C.QUEUE_ROUTES),
}


def body(payload: dict[str, Any], **top: Any) -> str:
    return json.dumps(
        {"payload": payload, "timestamp": "2024-01-15T10:30:00Z", "source": "config-manager", **top}
    )


def reject(raw: bytes | str) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert str(info.value)  # one clear message
    return info.value


@pytest.mark.parametrize("etype", list(EventType))
def test_every_type_parses_and_maps_to_its_task(etype: EventType) -> None:
    # Given the original's frame body for this type
    raw = body(PAYLOADS[etype])
    # When parsed (as str and as bytes) and turned into a task call
    event = parse_event(raw)
    assert parse_event(raw.encode()) == event
    call = task_call(event, received_at=5.0)
    # Then the task, its kwargs, its id and its queue follow the contract
    assert event.type is etype
    assert (call.name, call.queue) == EXPECTED_TASK[etype]
    assert call.task_id == event.event_id
    assert call.kwargs == {"event_id": event.event_id, "event_time": 1705314600.0, **EXPECTED_KWARGS[etype]}


def test_event_time_falls_back_to_reception_and_reads_epoch_ms_and_s() -> None:
    payload = PAYLOADS[EventType.ALL_CACHE_INVALID]
    assert (
        task_call(parse_event(json.dumps({"payload": payload})), received_at=5.0).kwargs["event_time"] == 5.0
    )
    assert (
        parse_event(json.dumps({"payload": payload, "timestamp": 1705314600000})).event_time() == 1705314600.0
    )
    assert parse_event(json.dumps({"payload": payload, "timestamp": 1705314600})).event_time() == 1705314600.0
    assert parse_event(json.dumps({"payload": payload, "timestamp": "not a date"})).event_time() is None


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "-5", '"9999-99-99"'])
def test_timestamps_that_are_no_time_fall_back_to_reception(raw: str) -> None:
    # Given a timestamp that json accepts but that names no instant
    body = '{"payload": {"type": "ALL_CACHE_INVALID"}, "timestamp": ' + raw + '}'
    # When the event becomes a task
    call = task_call(parse_event(body), received_at=7.0)
    # Then the propagation clock starts at reception, never at NaN/inf
    assert call.kwargs["event_time"] == 7.0


def test_boolean_timestamp_is_a_wrong_type() -> None:
    with pytest.raises(EventError) as err:
        parse_event('{"payload": {"type": "ALL_CACHE_INVALID"}, "timestamp": true}')
    assert err.value.reason == "wrong_type"
    assert "timestamp" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "reason", "says"),
    [
        (b"\xff\xfe{}", "not_utf8", "not UTF-8 (byte 0)"),
        (b'{"payload": "\xc3"}', "not_utf8", "not UTF-8"),
        ("", "not_json", "not JSON"),
        ("{", "not_json", "not JSON"),
        ("{'payload': 1}", "not_json", "not JSON"),
        ("[" * 100_000, "not_json", "not JSON"),
        ("[]", "not_object", "JSON list, not an object"),
        ("null", "not_object", "JSON NoneType"),
        ('"x"', "not_object", "JSON str"),
        ("3", "not_object", "JSON int"),
        ("{}", "no_payload", "no 'payload'"),
        ('{"payload": null}', "no_payload", "no 'payload'"),
        ('{"payload": []}', "wrong_type", "'payload' is list"),
        ('{"payload": "CACHE_CLEAR_INVALID"}', "wrong_type", "'payload' is str"),
        ('{"payload": {}}', "bad_type", "no 'type'"),
        ('{"payload": {"type": "CACHE_NUKE"}}', "bad_type", "unknown event type 'CACHE_NUKE'"),
        ('{"payload": {"type": 1}}', "bad_type", "unknown event type 1"),
        ('{"payload": {"type": "cache_clear_invalid"}}', "bad_type", "unknown event type"),
        (
            '{"payload": {"type": "CACHE_CLEAR_INVALID", "tenantId": "t"}}',
            "missing_field",
            "CACHE_CLEAR_INVALID needs payload.appId",
        ),
        (
            '{"payload": {"type": "CACHE_CLEAR_INVALID", "appId": "a"}}',
            "missing_field",
            "needs payload.tenantId",
        ),
        (
            '{"payload": {"type": "CACHE_DELETE_INVALID"}}',
            "missing_field",
            "CACHE_DELETE_INVALID needs payload.key",
        ),
        (
            '{"payload": {"type": "CACHE_CLEAR_SERVICE_INVALID", "tenantId": "t"}}',
            "missing_field",
            "needs payload.serviceName",
        ),
        (
            '{"payload": {"type": "CACHE_CLEAR_INVALID", "tenantId": 1, "appId": "a"}}',
            "wrong_type",
            "payload.tenantId",
        ),
        ('{"payload": {"type": "CACHE_DELETE_INVALID", "key": ["k"]}}', "wrong_type", "payload.key"),
        ('{"payload": {"type": "ALL_CACHE_INVALID"}, "timestamp": [1]}', "wrong_type", "timestamp"),
        ('{"payload": {"type": "ALL_CACHE_INVALID", "eventId": 5}}', "wrong_type", "payload.eventId"),
    ],
)
def test_bad_input_reasons(raw: bytes | str, reason: str, says: str) -> None:
    err = reject(raw)
    assert err.reason == reason
    assert says in str(err)


BAD_IDS = [
    "t*",
    "t#x",
    "t?",
    "a b",
    " t",
    "t\x00",
    "t\x1b[31m",
    "t\n",
    "t\u00e9",
    "[t]",
    "",
    "x" * 10_000,
    "x" * 257,
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda s: repr(s[:12]) + f"/{len(s)}")
@pytest.mark.parametrize(
    "field", ["tenantId", "appId", "serviceName", "eventId", "key", "top.eventId", "top.id"]
)
def test_bad_ids_are_rejected_as_bad_id(bad: str, field: str) -> None:
    payload: dict[str, Any] = {
        "type": "CACHE_CLEAR_INVALID",
        "tenantId": "t",
        "appId": "a",
        "serviceName": "s",
    }
    top: dict[str, Any] = {}
    if field.startswith("top."):
        top[field[4:]] = bad
    elif field == "key":
        payload |= {"type": "CACHE_DELETE_INVALID", "key": f"t#a#{bad}#K#e"}
    else:
        payload[field] = bad
    err = reject(body(payload, **top))
    assert err.reason == "bad_id"
    assert len(str(err)) < 400  # a 10k-char id is not echoed in full


def test_event_id_prefers_the_payloads_own_then_the_bodys_then_a_hash() -> None:
    p = dict(PAYLOADS[EventType.ALL_CACHE_INVALID])
    assert parse_event(body(p | {"eventId": "ev-1"}, eventId="top", id="other")).event_id == "ev-1"
    assert parse_event(body(p, eventId="top", id="other")).event_id == "top"
    assert parse_event(body(p, id="other")).event_id == "other"
    hashed = parse_event(body(p)).event_id
    assert hashed.startswith("ev-")
    assert len(hashed) == 43


def test_hashed_event_id_is_stable_and_canonical() -> None:
    # Given the same body with keys reordered and whitespace changed
    a = '{"payload": {"type": "CACHE_CLEAR_INVALID", "tenantId": "t", "appId": "a"}, "timestamp": 1}'
    b = '{ "timestamp" : 1,\n "payload": {"appId": "a", "tenantId": "t", "type": "CACHE_CLEAR_INVALID"} }'
    # Then both get the same id, equal to the documented hash of the canonical body
    assert parse_event(a).event_id == parse_event(b).event_id == canonical_event_id(json.loads(a))
    assert parse_event(a).event_id == parse_event(a.encode()).event_id
    # And a different event (other timestamp) gets another id
    assert parse_event(a.replace('"timestamp": 1', '"timestamp": 2')).event_id != parse_event(a).event_id


def test_extra_fields_are_kept() -> None:
    p = PAYLOADS[EventType.CACHE_CLEAR_INVALID] | {"changedBy": "alice", "nested": {"x": [1, 2]}}
    event = parse_event(body(p, traceId="abc-1"))
    assert event.payload.model_extra == {"changedBy": "alice", "nested": {"x": [1, 2]}}
    assert event.model_extra == {"traceId": "abc-1"}
    assert event.source == "config-manager"


def test_lone_surrogate_escapes_do_not_crash() -> None:
    event = parse_event('{"payload": {"type": "ALL_CACHE_INVALID", "note": "\\ud800"}, "source": "\\udfff"}')
    assert event.event_id.startswith("ev-")


def check(raw: bytes | str) -> None:
    """parse_event returns a MessengerEvent or raises EventError (with a reason), nothing else."""
    try:
        event = parse_event(raw)
    except EventError as exc:
        assert exc.reason in {
            "not_utf8",
            "not_json",
            "not_object",
            "no_payload",
            "bad_type",
            "wrong_type",
            "missing_field",
            "bad_id",
        }
        assert str(exc)
    else:
        assert isinstance(event, MessengerEvent)
        assert event.event_id
        call = task_call(event, received_at=1.0)
        assert call.task_id == event.event_id


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from([t.value for t in EventType]),
    st.sampled_from(["t", "a", KEY, "t*", "s v"]),
)
json_ish = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["type", "tenantId", "appId", "key", "serviceName", "eventId", "id", "x"]),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=20,
)
payloads = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from([t.value for t in EventType]), json_leaf)},
    optional={
        "tenantId": json_ish,
        "appId": json_ish,
        "key": json_ish,
        "serviceName": json_ish,
        "eventId": json_ish,
        "extra": json_ish,
    },
)
bodies = st.one_of(
    json_ish,
    st.fixed_dictionaries(
        {"payload": st.one_of(payloads, json_ish)},
        optional={"timestamp": json_ish, "source": json_ish, "eventId": json_ish, "id": json_ish},
    ),
)


@settings(max_examples=300)
@given(bodies)
def test_fuzz_json_ish_structures(data: object) -> None:
    check(json.dumps(data))


@settings(max_examples=200)
@given(st.sampled_from(list(EventType)), st.text(max_size=30))
def test_fuzz_mutated_valid_bodies(etype: EventType, noise: str) -> None:
    raw = body(PAYLOADS[etype])
    cut = len(noise) % len(raw)
    check(raw[:cut] + noise + raw[cut:])
