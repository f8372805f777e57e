"""The listener's pure parts: URLs, oversize stub, state table, backoff, redaction, spool; fuzzed."""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stomp.utils import parse_frame
from websocket import ABNF, WebSocket, WebSocketTimeoutException

from listener import frames, urls
from listener.auth import REDACTED, RedactingFilter, register_secret
from listener.errors import ConfigError, InvalidTransition
from listener.spool import Spool
from listener.states import TRANSITIONS, Backoff, ConnectionMachine, Event, State
from listener.transport import BoundedFrameBuffer
from proxysync.events import EventError, TaskCall, parse_event

# --- URLs ---


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://m.example.com/messenger/websocket", "wss://m.example.com/messenger/websocket"),
        ("http://localhost:8080/x", "ws://localhost:8080/x"),
        ("wss://h/ws", "wss://h/ws"),
    ],
)
def test_http_schemes_map_to_websocket_schemes(url: str, expected: str) -> None:
    assert urls.to_ws(url) == expected


def test_each_mode_has_its_url() -> None:
    base = "https://m.example.com/messenger/websocket"
    framed = urls.target_for("sockjs", base)
    assert framed.framing == "sockjs"
    assert framed.url.startswith("wss://m.example.com/messenger/websocket/") and framed.url.endswith(
        "/websocket"
    )
    server, session = framed.url.split("/")[-3:-1]
    assert len(server) == 3 and server.isdigit() and session
    assert urls.target_for("sockjs-raw", base) == urls.Target(
        "wss://m.example.com/messenger/websocket/websocket", "none"
    )
    assert urls.target_for("websocket", "http://127.0.0.1:15674/ws") == urls.Target(
        "ws://127.0.0.1:15674/ws", "none"
    )
    assert urls.info_url("wss://h/messenger/websocket") == "https://h/messenger/websocket/info"
    assert urls.host_and_port("wss://h/x") == ("h", 443)
    with pytest.raises(ConfigError):
        urls.target_for("carrier-pigeon", base)
    with pytest.raises(ConfigError):
        urls.to_ws("ftp://h/x")


# --- oversize stub ---


def test_oversize_stub_keeps_the_headers_needed_to_ack() -> None:
    raw = (
        b"MESSAGE\nsubscription:proxysync-1\nmessage-id:m-7\nack:a-7\ndestination:/topic/t\n"
        b"content-type:application/json\ncontent-length:5000000\n\n" + b"x" * 5000 + b"\x00"
    )
    stub = frames.oversize_stub(raw, 5_000_000)
    frame = parse_frame(stub.rstrip(b"\x00"))
    assert frame.cmd == "MESSAGE"
    assert frame.headers == {
        "subscription": "proxysync-1",
        "message-id": "m-7",
        "ack": "a-7",
        "destination": "/topic/t",
        frames.OVERSIZE_HEADER: "5000000",
        "content-length": "0",
    }
    assert frame.body == b""
    assert frames.ack_id(frame.headers) == "a-7"
    assert frames.ack_id({"message-id": "m-1"}) == "m-1"


@pytest.mark.parametrize(
    "raw", [b"ERROR\nmessage:x\n\nbody\x00", b"MESSAGE-without-blank-line", b"", b"\n\n"]
)
def test_oversize_stub_of_anything_else_is_a_heartbeat(raw: bytes) -> None:
    assert frames.oversize_stub(raw, len(raw)) == b"\n"


def test_headers_of_a_truncated_sockjs_frame_are_recovered() -> None:
    stomp_frame = "MESSAGE\nmessage-id:m-1\nsubscription:s\ncontent-length:9999999\n\n" + 'é"x' * 1000
    framed = ("a" + json.dumps([stomp_frame], ensure_ascii=False)).encode()[:500]
    head = frames.headers_of_truncated(framed, True)
    assert head == b"MESSAGE\nmessage-id:m-1\nsubscription:s\ncontent-length:9999999\n\n"
    assert frames.headers_of_truncated(b"MESSAGE\nid:1\n\nxx", False) == b"MESSAGE\nid:1\n\nxx"
    assert frames.headers_of_truncated(b'a["no blank line', True) == b""
    assert frames.headers_of_truncated(b"h", True) == b""


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_oversize_stub_never_raises(raw: bytes) -> None:
    stub = frames.oversize_stub(raw, len(raw))
    assert stub == b"\n" or (stub.startswith(b"MESSAGE\n") and stub.endswith(b"\n\n\x00"))


@pytest.mark.parametrize(
    ("text", "auth"),
    [
        ("authentication failed a valid bearer token is required", True),
        ("Access refused for user", False),
        ("403 Forbidden", True),
        ("Unauthorized", True),
        ("Invalid destination", False),
    ],
)
def test_auth_errors_are_recognised(text: str, auth: bool) -> None:
    assert frames.looks_like_auth_error(text) is auth


# --- event parser: parses, or raises our error ---

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=20,
)
_payloads = st.fixed_dictionaries(
    {
        "payload": st.dictionaries(
            st.sampled_from(["type", "tenantId", "appId", "key", "serviceName", "eventId", "x"]),
            st.sampled_from(
                ["CACHE_CLEAR_INVALID", "ALL_CACHE_INVALID", "ROUTES_REFRESH", "t#a#/p#CONFIG#prod"]
            )
            | _json,
            max_size=6,
        )
    }
)


@given(st.binary(max_size=300) | st.text(max_size=300) | _payloads.map(json.dumps))
@settings(max_examples=400, deadline=None)
def test_parse_event_parses_or_raises_event_error(body: bytes | str) -> None:
    try:
        event = parse_event(body)
    except EventError as exc:
        assert exc.reason and str(exc)
    else:
        assert event.event_id


# --- connection states and backoff ---


def test_state_table_walk_and_refusals() -> None:
    seen: list[tuple[State, Event, State]] = []
    m = ConnectionMachine(on_change=lambda *move: seen.append(move))
    for ev in (
        Event.START,
        Event.CONNECTED,
        Event.SUBSCRIBED,
        Event.DROPPED,
        Event.RETRY,
        Event.AUTH_FAILED,
        Event.RETRY,
        Event.CONNECTED,
        Event.SUBSCRIBED,
        Event.STOP,
        Event.CLOSED,
    ):
        m.handle(ev)
    assert m.state is State.STOPPED and len(seen) == 11
    with pytest.raises(InvalidTransition):
        m.handle(Event.START)
    assert TRANSITIONS[State.STOPPED] == {}
    assert all(Event.STOP in TRANSITIONS[s] for s in State if s not in (State.STOPPING, State.STOPPED))


def test_backoff_is_exponential_with_full_jitter_capped_and_reset_when_stable() -> None:
    b = Backoff(0.5, 4.0, stable_s=30, rng=random.Random(7))
    ceilings = []
    for _ in range(6):
        ceilings.append(b.ceiling())
        assert 0 <= b.next_delay() <= ceilings[-1]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.session_ended(5)
    assert b.ceiling() == 4.0  # a short session proves nothing
    b.session_ended(31)
    assert b.ceiling() == 0.5


# --- redaction ---


def test_redaction_filter_hides_tokens_in_messages_args_and_tracebacks() -> None:
    register_secret("tok-unit-1234567")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("stomp.py.unit-redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("sending frame: %s", [b"authorization:Bearer tok-unit-1234567\n"])
        try:
            raise ValueError("bad token tok-unit-1234567")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "tok-unit-1234567" not in text
    assert text.count(REDACTED) >= 2  # message + exception (+ source line)


# --- spool ---


def test_spool_is_fifo_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_items=3)
    calls = [
        TaskCall(
            name="proxysync.cache.delete",
            kwargs={"key": f"k{i}", "event_id": f"e{i}"},
            task_id=f"e{i}",
            queue="invalidations",
        )
        for i in range(4)
    ]
    assert [spool.push(c) for c in calls] == [True, True, True, False]
    spool.close()
    reopened = Spool(path, max_items=3)
    assert reopened.depth == 3
    rows = reopened.peek(10)
    assert [c for _, c in rows] == calls[:3]
    reopened.remove(rows[0][0])
    assert [c.task_id for _, c in reopened.peek(10)] == ["e1", "e2"] and reopened.depth == 2
    reopened.close()


def test_json_log_lines_are_one_object_each_and_redacted() -> None:
    from listener.logs import setup_logging

    register_secret("json-secret-998877")
    stream = io.StringIO()
    root_level = logging.getLogger().level
    handler = setup_logging("json", level=logging.INFO, stream=stream)
    try:
        logging.getLogger("listener.unit").info("[WS-Client] token %s used", "json-secret-998877")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    (line,) = [ln for ln in stream.getvalue().splitlines() if "WS-Client" in ln]
    doc = json.loads(line)
    assert doc["message"] == "[WS-Client] token *** used"
    assert doc["level"] == "INFO" and doc["logger"] == "listener.unit"


# --- bounded frame reader ---


class _Stream:
    """Bytes served in small reads, with a read timeout injected every few calls (resumability)."""

    def __init__(self, data: bytes, *, chunk: int = 7000, timeout_every: int = 3) -> None:
        self.data, self.pos, self.calls = data, 0, 0
        self.chunk, self.timeout_every = chunk, timeout_every

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        if self.calls % self.timeout_every == 0:
            raise WebSocketTimeoutException("tick")
        out = self.data[self.pos : self.pos + min(n, self.chunk)]
        self.pos += len(out)
        return out


def _server_frame(payload: bytes, *, fin: int = 1, opcode: int = ABNF.OPCODE_TEXT) -> bytes:
    return bytes(ABNF(fin, 0, 0, 0, opcode, 0, payload).format())


def _read_message(ws: WebSocket) -> tuple[int, bytes]:
    while True:
        try:
            return ws.recv_data(control_frame=True)  # type: ignore[no-any-return]
        except WebSocketTimeoutException:
            continue


def test_bounded_reader_reads_small_messages_whole_and_truncates_big_ones_even_fragmented() -> None:
    head = b"MESSAGE\nmessage-id:m-1\n\n"
    big = head + b"b" * 300_000
    stream = b"".join(
        [
            _server_frame(b"MESSAGE\nmessage-id:small\n\nhello\x00"),
            _server_frame(big),  # one frame over the limit
            _server_frame(head + b"f" * 60_000, fin=0),  # a fragmented one: under the limit at first...
            _server_frame(b"", opcode=ABNF.OPCODE_PONG),  # (an interleaved control frame)
            _server_frame(b"g" * 90_000, fin=0, opcode=ABNF.OPCODE_CONT),  # ...then over it
            _server_frame(b"h" * 90_000, fin=1, opcode=ABNF.OPCODE_CONT),
            _server_frame(b"after\x00"),
        ]
    )
    ws = WebSocket(skip_utf8_validation=True)
    reader = BoundedFrameBuffer(_Stream(stream), limit=100_000, keep=1000)
    ws.frame_buffer = reader
    assert _read_message(ws) == (ABNF.OPCODE_TEXT, b"MESSAGE\nmessage-id:small\n\nhello\x00")
    assert reader.truncated is None
    opcode, data = _read_message(ws)
    assert (opcode, data, reader.truncated) == (ABNF.OPCODE_TEXT, big[:1000], len(big))
    assert _read_message(ws)[0] == ABNF.OPCODE_PONG
    opcode, data = _read_message(ws)
    assert data.startswith(head) and len(data) == len(head) + 60_000  # the kept first fragment only
    assert reader.truncated == len(head) + 60_000 + 180_000
    assert _read_message(ws) == (ABNF.OPCODE_TEXT, b"after\x00") and reader.truncated is None
