"""SockJS framing (proxysync.sockjs): literals both ways; fuzz: "decodes or raises SockJSError"."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxysync.sockjs import (
    HEARTBEAT,
    OPEN,
    SockJSError,
    SockJSFrame,
    decode_client_messages,
    decode_server_frame,
    encode_client_messages,
    encode_close,
    encode_heartbeat,
    encode_messages,
    encode_open,
    info_document,
    session_path,
)

CONNECTED = "CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00"

# (frame object, its exact wire text): each pair is checked in both directions.
SERVER_LITERALS = [
    (OPEN, "o"),
    (HEARTBEAT, "h"),
    (
        SockJSFrame("messages", messages=(CONNECTED,)),
        'a["CONNECTED\\nversion:1.2\\nheart-beat:0,0\\n\\n\\u0000"]',
    ),
    (SockJSFrame("messages", messages=("a", 'b"c')), 'a["a","b\\"c"]'),
    (SockJSFrame("messages", messages=("zürich ✓",)), 'a["zürich ✓"]'),
    (SockJSFrame("close", code=3000, reason="Go away!"), 'c[3000,"Go away!"]'),
]


def _encode(frame: SockJSFrame) -> str:
    if frame.kind == "open":
        return encode_open()
    if frame.kind == "heartbeat":
        return encode_heartbeat()
    if frame.kind == "messages":
        return encode_messages(list(frame.messages))
    assert frame.code is not None and frame.reason is not None
    return encode_close(frame.code, frame.reason)


@pytest.mark.parametrize(("frame", "wire"), SERVER_LITERALS)
def test_server_frames_encode_to_the_literal(frame: SockJSFrame, wire: str) -> None:
    assert _encode(frame) == wire


@pytest.mark.parametrize(("frame", "wire"), SERVER_LITERALS)
def test_server_literals_decode_to_the_frame(frame: SockJSFrame, wire: str) -> None:
    assert decode_server_frame(wire) == frame


CLIENT_LITERALS = [
    (("SEND\ndestination:/topic/x\n\nhi\x00",), '["SEND\\ndestination:/topic/x\\n\\nhi\\u0000"]'),
    (("\n",), '["\\n"]'),
    (("a", "b"), '["a","b"]'),
]


@pytest.mark.parametrize(("messages", "wire"), CLIENT_LITERALS)
def test_client_messages_both_ways(messages: tuple[str, ...], wire: str) -> None:
    assert encode_client_messages(list(messages)) == wire
    assert decode_client_messages(wire) == messages


def test_a_single_json_string_from_a_client_is_one_message() -> None:
    assert decode_client_messages('"CONNECT\\n\\n\\u0000"') == ("CONNECT\n\n\x00",)


@pytest.mark.parametrize(
    "wire",
    [
        "",
        "x",
        "o1",
        "hh",
        "a",
        "a{}",
        "a[1]",
        'a["x",2]',
        "c",
        "c[]",
        "c[3000]",
        'c["3000","x"]',
        'c[true,"x"]',
        'c[3000,"x",1]',
        'a["x"',
        "z[]",
    ],
)
def test_bad_server_frames_raise_sockjs_error(wire: str) -> None:
    with pytest.raises(SockJSError):
        decode_server_frame(wire)


@pytest.mark.parametrize("wire", ["", "[", "1", "{}", "[1]", '["a",null]', "null", 'a["x"]'])
def test_bad_client_messages_raise_sockjs_error(wire: str) -> None:
    with pytest.raises(SockJSError):
        decode_client_messages(wire)


def test_session_path_follows_the_spring_layout() -> None:
    path = session_path("/messenger/websocket/")
    assert re.fullmatch(r"/messenger/websocket/\d{3}/[a-z0-9]{16}/websocket", path)
    assert session_path("/b", server_id="007", session_id="abc") == "/b/007/abc/websocket"


def test_info_document_says_websocket_is_available() -> None:
    doc = info_document()
    assert doc["websocket"] is True and doc["cookie_needed"] is False
    assert json.loads(json.dumps(doc)) == doc


@given(st.lists(st.text(), max_size=5))
def test_messages_round_trip(messages: list[str]) -> None:
    assert decode_server_frame(encode_messages(messages)) == SockJSFrame("messages", messages=tuple(messages))
    assert decode_client_messages(encode_client_messages(messages)) == tuple(messages)


@given(st.integers(min_value=0, max_value=9999), st.text())
def test_close_round_trips(code: int, reason: str) -> None:
    assert decode_server_frame(encode_close(code, reason)) == SockJSFrame("close", code=code, reason=reason)


@given(st.one_of(st.text(), st.sampled_from("ohac").flatmap(lambda k: st.text().map(lambda t: k + t))))
def test_any_server_text_decodes_or_raises_sockjs_error(text: str) -> None:
    try:
        frame = decode_server_frame(text)
    except SockJSError:
        return
    assert frame.kind in ("open", "heartbeat", "messages", "close")


@given(
    st.one_of(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
            max_leaves=8,
        ).map(json.dumps),
    )
)
def test_any_client_text_decodes_or_raises_sockjs_error(text: str) -> None:
    try:
        messages = decode_client_messages(text)
    except SockJSError:
        return
    assert all(isinstance(m, str) for m in messages)
