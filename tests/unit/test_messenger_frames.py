"""The stand-in's STOMP 1.2 codec: literals both ways, escaping, incremental parsing, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stomp import utils as stomp_utils

from messenger.errors import FrameTooLargeError, StompProtocolError
from messenger.frames import (
    FrameParser,
    StompFrame,
    encode_frame,
    escape,
    negotiate_heartbeats,
    parse_heartbeat,
    unescape,
)


def test_message_frame_encodes_to_the_literal() -> None:
    wire = encode_frame(
        "MESSAGE", {"destination": "/topic/x", "message-id": "m1", "subscription": "0"}, b"hi"
    )
    assert wire == b"MESSAGE\ncontent-length:2\ndestination:/topic/x\nmessage-id:m1\nsubscription:0\n\nhi\x00"


def test_header_values_are_escaped_except_on_connected() -> None:
    assert (
        encode_frame("RECEIPT", {"receipt-id": "a:b\nc\\d\re"})
        == b"RECEIPT\nreceipt-id:a\\cb\\nc\\\\d\\re\n\n\x00"
    )
    assert encode_frame("CONNECTED", {"version": "1.2", "server": "x:y"}) == (
        b"CONNECTED\nserver:x:y\nversion:1.2\n\n\x00"
    )


def test_empty_message_still_carries_content_length() -> None:
    assert b"content-length:0\n" in encode_frame("MESSAGE", {"destination": "/d"}, b"")


def test_parser_reads_the_literal_back() -> None:
    wire = b"SEND\ndestination:/topic/x\ncontent-type:application/json\nk:a\\cb\\nc\\\\\n\n{}\x00"
    assert FrameParser().feed(wire) == [
        StompFrame(
            "SEND", {"destination": "/topic/x", "content-type": "application/json", "k": "a:b\nc\\"}, b"{}"
        )
    ]


def test_connect_headers_are_not_unescaped() -> None:
    (frame,) = FrameParser().feed(b"CONNECT\naccept-version:1.2\npasscode:a\\cb\n\n\x00")
    assert frame == StompFrame("CONNECT", {"accept-version": "1.2", "passcode": "a\\cb"}, b"")


def test_content_length_allows_nul_in_the_body_and_crlf_lines() -> None:
    wire = b"SEND\r\ndestination:/d\r\ncontent-length:3\r\n\r\na\x00b\x00"
    assert FrameParser().feed(wire) == [
        StompFrame("SEND", {"destination": "/d", "content-length": "3"}, b"a\x00b")
    ]


def test_heartbeats_partial_frames_and_several_frames_per_chunk() -> None:
    parser = FrameParser()
    assert parser.feed(b"\n\r\n") == [None, None]
    assert parser.feed(b"SEND\ndestination:/d\n\nab") == []
    assert parser.feed(b"c\x00\nDISCONNECT\nreceipt:7\n\n\x00SEND\ndest") == [
        StompFrame("SEND", {"destination": "/d"}, b"abc"),
        None,
        StompFrame("DISCONNECT", {"receipt": "7"}),
    ]
    assert parser.buffered == len(b"SEND\ndest")


def test_repeated_header_first_one_wins() -> None:
    (frame,) = FrameParser().feed(b"SEND\ndestination:/a\ndestination:/b\n\n\x00")
    assert frame.headers["destination"] == "/a"


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"FOO\n\n\x00", "unknown command"),
        (b"MESSAGE\n\n\x00", "unknown command"),  # a server frame sent by a client
        (b"SEND\nno-colon\n\n\x00", "malformed header"),
        (b"SEND\nk:a\\tb\n\n\x00", "undefined escape"),
        (b"SEND\ncontent-length:x\n\n\x00", "content-length"),
        (b"SEND\ncontent-length:1\n\nab\x00", "not followed by NUL"),
        (b"SEND\ndestination:/d\x00", "blank line"),
        (b"SEND\nk:\xff\n\n\x00", "UTF-8"),
    ],
)
def test_bad_frames_raise_protocol_errors(wire: bytes, why: str) -> None:
    with pytest.raises(StompProtocolError, match=why):
        FrameParser().feed(wire)


def test_frames_over_the_limit_are_refused_before_buffering_them_whole() -> None:
    with pytest.raises(FrameTooLargeError):
        FrameParser(max_frame=10).feed(b"SEND\ncontent-length:11\n\n")
    with pytest.raises(FrameTooLargeError):
        FrameParser(max_frame=10).feed(b"SEND\n\n" + b"x" * 11)


def test_heartbeat_negotiation_follows_the_spec() -> None:
    assert parse_heartbeat(None) == (0, 0)
    assert parse_heartbeat("100,200") == (100, 200)
    # server (sx=500, sy=500), client (cx=100 can send, cy=1000 wants): server sends every max(500,1000),
    # expects the client every max(100,500).
    assert negotiate_heartbeats((500, 500), (100, 1000)) == (1000, 500)
    assert negotiate_heartbeats((0, 0), (100, 100)) == (0, 0)
    assert negotiate_heartbeats((500, 500), (0, 0)) == (0, 0)
    with pytest.raises(StompProtocolError):
        parse_heartbeat("1;2")


def test_our_frames_parse_with_stomp_py_and_back() -> None:
    wire = encode_frame("MESSAGE", {"destination": "/topic/a:b", "message-id": "m\\1"}, "é")
    frame = stomp_utils.parse_frame(wire[:-1])
    assert frame.cmd == "MESSAGE" and frame.headers["destination"] == "/topic/a:b"
    assert frame.headers["message-id"] == "m\\1" and frame.body == "é".encode()


header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@given(header_text)
def test_escape_round_trips(value: str) -> None:
    assert unescape(escape(value)) == value


@given(
    st.dictionaries(header_text.filter(bool), header_text, max_size=4),
    st.binary(max_size=64),
    st.integers(min_value=1, max_value=40),
)
def test_send_frames_round_trip_through_any_chunking(headers: dict[str, str], body: bytes, step: int) -> None:
    headers = {k: v for k, v in headers.items() if k != "content-length"}
    wire = encode_frame("SEND", headers, body)
    parser = FrameParser()
    got: list[StompFrame | None] = []
    for i in range(0, len(wire), step):
        got += parser.feed(wire[i : i + step])
    assert got == [StompFrame("SEND", headers | {"content-length": str(len(body))}, body)]


@given(
    st.binary(max_size=200)
    | st.sampled_from([b"SEND\n", b"CONNECT\n", b"ACK\n"]).flatmap(
        lambda c: st.binary(max_size=100).map(lambda b: c + b)
    )
)
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        out = FrameParser(max_frame=1024).feed(data)
    except StompProtocolError:
        return
    assert all(f is None or isinstance(f, StompFrame) for f in out)
