"""The stand-in's STOMP state machine without sockets: frames in, outcomes (frames to send, close) out."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from stomp import utils as stomp_utils

from messenger.broker import Broker, Outcome
from messenger.frames import CLIENT_COMMANDS, StompFrame


def _frames(outcome: Outcome) -> list[tuple[str, Any]]:
    """Server frames read back with stomp.py's own parser (what a real client does)."""
    return [(sid, stomp_utils.parse_frame(data[:-1])) for sid, data in outcome.send]


def _connected(broker: Broker, **headers: str) -> str:
    sid = broker.open_session(transport="websocket").session_id
    outcome = broker.handle(sid, StompFrame("CONNECT", {"accept-version": "1.2"} | headers))
    assert not outcome.close, outcome
    return sid


def test_connect_answers_connected_with_version_and_negotiated_heartbeats() -> None:
    broker = Broker(heartbeat_ms=500)
    session = broker.open_session(transport="websocket")
    outcome = broker.handle(
        session.session_id, StompFrame("CONNECT", {"accept-version": "1.1,1.2", "heart-beat": "100,1000"})
    )
    ((_, connected),) = _frames(outcome)
    assert connected.cmd == "CONNECTED" and connected.headers["version"] == "1.2"
    assert connected.headers["heart-beat"] == "500,500"
    assert outcome.connected is session and session.heartbeat == (1000, 500)


def test_frames_before_connect_and_unknown_versions_get_error_and_close() -> None:
    broker = Broker()
    sid = broker.open_session(transport="websocket").session_id
    outcome = broker.handle(sid, StompFrame("SUBSCRIBE", {"destination": "/d", "id": "0"}))
    assert outcome.close and outcome.error == "SUBSCRIBE before CONNECT"
    sid = broker.open_session(transport="websocket").session_id
    outcome = broker.handle(sid, StompFrame("CONNECT", {"accept-version": "1.0"}))
    assert outcome.close and outcome.error == "supported protocol versions are 1.2"


def test_publish_reaches_exact_destination_subscribers_with_message_headers() -> None:
    broker = Broker()
    a, b = _connected(broker), _connected(broker)
    broker.handle(a, StompFrame("SUBSCRIBE", {"destination": "/topic/x", "id": "sub-a"}))
    broker.handle(b, StompFrame("SUBSCRIBE", {"destination": "/topic/y", "id": "sub-b"}))
    ((sid, msg),) = _frames(broker.publish("/topic/x", b'{"k":1}'))
    assert sid == a and msg.cmd == "MESSAGE" and msg.body == b'{"k":1}'
    assert msg.headers["subscription"] == "sub-a" and msg.headers["destination"] == "/topic/x"


def test_message_headers_and_ack_header_by_ack_mode() -> None:
    broker = Broker()
    sid = _connected(broker)
    broker.handle(sid, StompFrame("SUBSCRIBE", {"destination": "/t", "id": "auto"}))
    broker.handle(
        sid, StompFrame("SUBSCRIBE", {"destination": "/t", "id": "ind", "ack": "client-individual"})
    )
    outcome = broker.publish("/t", b"body", {"content-type": "text/plain"})
    frames = {f.headers["subscription"]: f for _, f in _frames(outcome)}
    assert set(frames) == {"auto", "ind"}
    ind = frames["ind"].headers
    assert ind["destination"] == "/t" and ind["content-type"] == "text/plain" and ind["content-length"] == "4"
    assert ind["ack"] == ind["message-id"] and "ack" not in frames["auto"].headers
    assert frames["auto"].headers["message-id"] != ind["message-id"]
    broker.handle(sid, StompFrame("ACK", {"id": ind["message-id"]}))
    broker.handle(sid, StompFrame("NACK", {"id": "other"}))
    stats = broker.stats()
    assert stats["acks"] == {ind["message-id"]: 1} and stats["nacks"] == {"other": 1}
    assert stats["pending_acks"] == 0


def test_send_broadcasts_and_receipt_is_returned() -> None:
    broker = Broker()
    sub, sender = _connected(broker), _connected(broker)
    broker.handle(sub, StompFrame("SUBSCRIBE", {"destination": "/topic/x", "id": "0"}))
    outcome = broker.handle(sender, StompFrame("SEND", {"destination": "/topic/x", "receipt": "r-1"}, b"hi"))
    (to_sub, message), (to_sender, receipt) = outcome.send
    assert to_sub == sub and stomp_utils.parse_frame(message[:-1]).body == b"hi"
    assert to_sender == sender and receipt == b"RECEIPT\nreceipt-id:r-1\n\n\x00"


def test_unsubscribe_stops_delivery_and_disconnect_closes_after_receipt() -> None:
    broker = Broker()
    sid = _connected(broker)
    broker.handle(sid, StompFrame("SUBSCRIBE", {"destination": "/d", "id": "7"}))
    broker.handle(sid, StompFrame("UNSUBSCRIBE", {"id": "7"}))
    assert broker.publish("/d", b"x").send == []
    outcome = broker.handle(sid, StompFrame("DISCONNECT", {"receipt": "bye"}))
    assert outcome.close and outcome.send == [(sid, b"RECEIPT\nreceipt-id:bye\n\n\x00")]


def test_missing_headers_and_bad_ack_modes_are_errors() -> None:
    broker = Broker()
    for frame in (
        StompFrame("SUBSCRIBE", {"id": "1"}),
        StompFrame("SUBSCRIBE", {"destination": "/d"}),
        StompFrame("SUBSCRIBE", {"destination": "/d", "id": "1", "ack": "sometimes"}),
        StompFrame("SEND", {}),
        StompFrame("ACK", {}),
        StompFrame("BEGIN", {"transaction": "t"}),
    ):
        sid = _connected(broker)
        outcome = broker.handle(sid, frame)
        assert outcome.close and outcome.send[0][1].startswith(b"ERROR\n"), frame


def test_token_required_on_upgrade_or_connect_and_never_shown() -> None:
    broker = Broker(token="s3cret")
    refused = broker.open_session(transport="websocket").session_id
    outcome = broker.handle(refused, StompFrame("CONNECT", {"authorization": "Bearer nope"}))
    assert outcome.close and outcome.error == "authentication failed"
    assert b"message:authentication failed" in outcome.send[0][1]
    by_upgrade = broker.open_session(transport="websocket", upgrade_authorization="Bearer s3cret").session_id
    assert not broker.handle(by_upgrade, StompFrame("CONNECT", {})).close
    for headers in ({"authorization": "Bearer s3cret"}, {"authorization": "s3cret"}, {"passcode": "s3cret"}):
        assert not broker.handle(
            broker.open_session(transport="ws").session_id, StompFrame("CONNECT", headers)
        ).close
    broker.handle(
        by_upgrade,
        StompFrame("SUBSCRIBE", {"destination": "/d", "id": "1", "authorization": "Bearer s3cret"}),
    )
    stats = broker.stats()
    assert stats["auth_failures"] == 1 and stats["connects"] == 4
    assert stats["subscriptions"][0]["headers"]["authorization"] == "<redacted:valid>"
    assert "s3cret" not in repr(stats)


commands = st.sampled_from(sorted(CLIENT_COMMANDS))
header_names = st.sampled_from(
    [
        "destination",
        "id",
        "ack",
        "receipt",
        "accept-version",
        "heart-beat",
        "authorization",
        "passcode",
        "content-type",
        "x",
    ]
)
frames = st.builds(
    StompFrame,
    commands,
    st.dictionaries(header_names, st.text(max_size=12), max_size=5),
    st.binary(max_size=16),
)


@given(st.lists(frames, max_size=12), st.sampled_from([None, "tok"]))
def test_any_frame_sequence_yields_outcomes_never_exceptions(
    sequence: list[StompFrame], token: str | None
) -> None:
    broker = Broker(token=token, heartbeat_ms=100)
    sid = broker.open_session(transport="websocket").session_id
    for frame in sequence:
        outcome = broker.handle(sid, frame)
        for target, data in outcome.send:
            assert target == sid and data.endswith(b"\x00")
            assert stomp_utils.parse_frame(data[:-1]).cmd in ("CONNECTED", "RECEIPT", "ERROR", "MESSAGE")
        if outcome.close:
            break
    for sub in broker.stats()["subscriptions"]:  # secrets never shown, whatever was sent
        assert all(
            v.startswith("<redacted") for k, v in sub["headers"].items() if k in ("authorization", "passcode")
        )
