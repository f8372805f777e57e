"""Fault 6: a barrage of bad input through the real Messenger path, good events interleaved.

Bodies are published through the stand-in like any event (random bytes, invalid UTF-8, JSON that is not an
object, no ``payload``, null/unknown ``type``, wrong field types, a 10 MB body, ids with ``*``, ``#``, ``?``,
spaces and control characters, 10 000-character ids); STOMP frames with broken headers are written raw onto
the listener's session by the stand-in. Each bad one must be refused with a logged reason and counted on the
listener's ``/metrics``; the listener never restarts or reconnects; every good event is applied; no glob or
wrong-tenant deletion happens (other tenants' entries survive).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from cache import RouteAuthCache
from messenger.server import MessengerServer
from tests.listener.conftest import event, wait_for
from tests.support.pipeline import Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def _bad_bodies(victim: str) -> list[tuple[str, bytes | str]]:
    """(expected rejection reason, body)."""
    rng = random.Random(8)
    noise = b"\xff" + bytes(rng.randrange(256) for _ in range(300))
    clear = "CACHE_CLEAR_INVALID"
    out: list[tuple[str, bytes | str]] = [
        ("not_utf8", noise),
        ("not_utf8", b'{"payload": {"type": "ALL_CACHE_INVALID", "tenantId": "\xc3\x28"}}'),
        ("not_json", "{this is not json"),
        ("not_json", ""),
        ("not_object", "[1, 2, 3]"),
        ("not_object", '"ALL_CACHE_INVALID"'),
        ("not_object", "null"),
        ("no_payload", json.dumps({"timestamp": "2024-01-15T10:30:00Z", "source": "x"})),
        ("bad_type", json.dumps({"payload": {"type": None}})),
        ("bad_type", json.dumps({"payload": {"type": "DROP_EVERYTHING"}})),
        ("bad_type", json.dumps({"payload": {"tenantId": victim}})),
        ("wrong_type", json.dumps({"payload": "CACHE_CLEAR_INVALID"})),
        ("wrong_type", event(clear, tenantId=123, appId="app-1")),
        ("wrong_type", event(clear, tenantId=[victim], appId="app-1")),
        ("missing_field", event(clear, tenantId=victim)),
        ("oversize", "x" * (10 * 1024 * 1024)),
    ]
    for bad in (f"{victim}*", "*", f"{victim}#app-1", f"{victim}?x=1", f"{victim} app", f"{victim}\x00",
                f"{victim}\n", f"{victim}\x1b[2J", "a" * 10_000):
        out.append(("bad_id", event(clear, tenantId=bad, appId="app-1")))
        out.append(("bad_id", event("CACHE_CLEAR_SERVICE_INVALID", tenantId=victim, serviceName=bad)))
    out.append(("bad_id", event("CACHE_DELETE_INVALID", key=f"{victim}#app-1#/api/*#CONFIG#production x")))
    out.append(("bad_id", event("CACHE_DELETE_INVALID", key="*")))
    out.append(("bad_id", event("ALL_CACHE_INVALID", eventId="id with spaces")))
    return out


def _raw_frames(topic_dest: str) -> list[bytes]:
    """MESSAGE frames with broken headers, as a misbehaving broker could send them."""
    head = f"MESSAGE\ndestination:{topic_dest}\nsubscription:proxysync-1\n"
    return [
        (head + "message-id:r1\nack:r1\nthis header has no colon\n\nbroken\x00").encode(),
        (head + "message-id:r2\nack:r2\ncontent-length:abc\n\nbroken\x00").encode(),
        (head + "message-id:r3\nack:r3\nbad\\xescape:v\\q\n\nbroken\x00").encode(),
        (head + "message-id:r4\nack:r4\ncontent-length:3\n\nbroken-longer-than-its-length\x00").encode(),
        b"NOT-A-COMMAND\nfoo:bar\n\nbroken\x00",
        (head + "message-id:r6\nack:r6\n" + "x" * 5000 + ":" + "y" * 5000 + "\n\nbroken\x00").encode(),
    ]


def _inject(server: MessengerServer, frame: bytes) -> None:
    """Write ``frame`` as-is onto every open session (the stand-in's own send path)."""
    app = server.app

    async def send_all() -> None:
        for conn in list(app.conns.values()):
            await app._send_stomp(conn, frame)

    server._call(send_all())


def _rejected(metrics: dict[str, float]) -> dict[str, float]:
    prefix = 'proxysync_listener_frames_rejected_total{reason="'
    return {k[len(prefix):-2]: v for k, v in metrics.items() if k.startswith(prefix)}


def test_bad_input_barrage_is_refused_counted_and_harmless(pipeline: Pipeline, redis_client: Any) -> None:
    p = pipeline
    p.start_worker(concurrency=1)
    # (raw WebSocket, not SockJS: SockJS carries JSON strings, so invalid UTF-8 could not arrive as such)
    listener = p.start_listener(WEBSOCKET_CLIENT_TRANSPORT="sockjs-raw")
    wait_for(lambda: len(p.gap_resyncs()) == 1, 30, "the start-up resync applied")
    # Given entries of other tenants (and of the tenant the bad events aim at), after the start-up resync
    cache = RouteAuthCache(redis_client, prefix=p.cache_prefix)
    victim, other = f"victim-{p.tag}", f"other-{p.tag}"
    survivors = [f"{t}#app-{a}#/api/{i}#CONFIG#production" for t in (victim, other) for a in (1, 2)
                 for i in range(5)]
    for k in survivors:
        cache.put(k, {"route": k}, service="svc")
    pid, connects = listener.pid, p.messenger.stats()["connects"]
    # When bad bodies and broken frames are interleaved with good events
    bad = _bad_bodies(victim)
    raw = _raw_frames(f"/topic/{p.topic}")
    good = 0
    for n, (_reason, body) in enumerate(bad):
        assert p.publish_raw(body) == 1
        p.publish_delete(n, "good")
        good += 1
    for n, frame in enumerate(raw):
        _inject(p.messenger, frame)
        p.publish_delete(len(bad) + n, "good")
        good += 1
    # Then every good event is applied
    assert p.wait_applied(60), p.diagnose()
    counts = p.account("6 bad input barrage (good interleaved)")
    # And every bad body was refused, counted by reason, and logged once with its reason
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    # (a frame whose command no server sends never reaches the dispatcher: the transport counts it bad_frame)
    unknown_commands = sum(1 for f in raw if not f.startswith(b"MESSAGE"))
    want_total = len(bad) + len(raw)
    wait_for(lambda: sum(_rejected(p.metrics(listener)).values()) >= len(bad), 20, "rejections counted")
    got = _rejected(p.metrics(listener))
    counts.notes.append(f"rejected by reason: {dict(sorted(got.items()))}; raw broken frames {len(raw)}")
    for reason, n in expected.items():
        assert got.get(reason, 0) >= n, (reason, got, expected)
    log = listener.text()
    assert log.count("rejected frame") == sum(got.values())
    assert sum(got.values()) == want_total, (got, expected, f"{len(raw)} raw frames")
    assert got.get("bad_frame", 0) == unknown_commands
    assert log.count("unknown response frame type") == unknown_commands
    # And the listener never restarted nor reconnected
    assert listener.alive() and listener.pid == pid
    assert p.metric(listener, "proxysync_listener_reconnects_total") == 0
    assert p.messenger.stats()["connects"] == connects
    assert "Traceback" not in log
    # And no glob or wrong-tenant deletion happened
    assert [k for k in survivors if cache.get(k) is None] == []
    assert_nothing_lost(p, counts)
