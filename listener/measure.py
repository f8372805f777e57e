"""``python -m listener.measure``: what the listener's hot paths cost, printed as numbers (never pass/fail).

1. Receiving + parsing one 3 MB STOMP frame through :class:`~listener.transport.MessengerTransport`, plain
   and SockJS-framed, with UTF-8 validation skipped (what the listener does) vs on (websocket-client's
   default: the baseline).
2. Frame -> task in the broker through the Messenger stand-in and a real listener into Redis: a burst of
   events (events per second; dispatch latency from the listener's histogram), then single events.

Needs Redis at ``CELERY_BROKER_URL`` (default ``redis://localhost:6379/0``); uses a private queue prefix.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
from stomp.utils import parse_frame

from listener import urls
from listener.service import Listener
from listener.settings import load_settings
from listener.transport import MessengerTransport
from messenger.server import MessengerServer
from proxysync import constants as C

FRAME = json.dumps({"payload": {"type": "ALL_CACHE_INVALID"}, "blob": "é" * 1_500_000}, ensure_ascii=False)


def receive_cost(framing: str, *, validate: bool, rounds: int = 5) -> float:
    """Median ms to turn one 3 MB WebSocket message (already in the socket buffer) into a STOMP frame."""
    with MessengerServer(heartbeat_ms=0) as server:
        base = server.sockjs_url if framing == "sockjs" else server.ws_url
        target = urls.target_for("sockjs" if framing == "sockjs" else "websocket", base)
        t = MessengerTransport(target, header=[], sslopt={}, vhost="localhost", max_frame=4 << 20, idle_s=0)
        t.running = True
        t.attempt_connection()
        assert t.ws is not None and t.frames is not None
        t.frames.skip_utf8_validation = not validate
        t.ws.cont_frame.skip_utf8_validation = not validate
        t.send(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
        t.receive()
        t.send(b"SUBSCRIBE\ndestination:/topic/measure\nid:1\nack:auto\n\n\x00")
        times = []
        for _ in range(rounds):
            threading.Timer(0.05, lambda: server.publish("/topic/measure", FRAME)).start()
            select.select([t.ws.sock] if t.ws.sock else [], [], [], 10)
            time.sleep(0.3)  # the whole frame is in the socket buffer: time our work, not the network
            start = time.perf_counter()
            frame = parse_frame(t.receive().rstrip(b"\x00"))
            times.append((time.perf_counter() - start) * 1000)
            assert len(frame.body) >= len(FRAME.encode()) - 10
        t.disconnect_socket()
        return statistics.median(times)


def dispatch_burst(n: int, broker_url: str) -> dict[str, float]:
    """n events published at once -> all n tasks in Redis; latency quantiles from the listener's histogram."""
    prefix = f"measure-{uuid.uuid4().hex[:8]}"
    os.environ[C.QUEUE_PREFIX_ENV] = prefix
    client = redis.Redis.from_url(broker_url)
    with MessengerServer() as server, tempfile.TemporaryDirectory() as tmp:
        topic = f"measure-{uuid.uuid4().hex[:8]}"
        listener = Listener(
            load_settings(
                WEBSOCKET_CLIENT_BASEURL=server.url,
                WEBSOCKET_CLIENT_TOPIC=topic,
                LISTENER_HTTP_PORT=0,
                WEBSOCKET_CLIENT_GAP_POLICY="none",
                LISTENER_SPOOL_PATH=str(Path(tmp) / "spool.db"),
                CELERY_BROKER_URL=broker_url,
            )
        ).start()
        try:
            deadline = time.monotonic() + 15
            while listener.supervisor.subscriptions == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            bodies = [
                json.dumps(
                    {
                        "payload": {
                            "type": "CACHE_DELETE_INVALID",
                            "eventId": f"m-{i}",
                            "key": f"t#a#/p/{i}#CONFIG#prod",
                        }
                    }
                )
                for i in range(n)
            ]
            queue = C.queue_name(C.QUEUE_INVALIDATIONS, prefix)
            start = time.perf_counter()
            for body in bodies:
                server.publish(C.topic_destination(topic), body)
            while _llen(client, queue) < n and time.perf_counter() - start < 120:
                time.sleep(0.005)
            elapsed = time.perf_counter() - start
            quantiles = _quantiles(listener)
            single = []
            for i in range(50):  # one at a time: publish -> task in Redis, nothing queued ahead of it
                body = json.dumps({"payload": {"type": "ALL_CACHE_INVALID", "eventId": f"s-{i}"}})
                t0 = time.perf_counter()
                server.publish(C.topic_destination(topic), body)
                while _llen(client, queue) < n + i + 1 and time.perf_counter() - t0 < 10:
                    time.sleep(0.0005)
                single.append((time.perf_counter() - t0) * 1000)
        finally:
            listener.stop(5)
            for key in client.scan_iter(match=f"*{prefix}*"):
                client.unlink(key)
            client.close()
    return {
        "events": n,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n / elapsed, 1),
        "single_event_p50_ms": round(statistics.median(single), 2),
        "single_event_max_ms": round(max(single), 2),
    } | quantiles


def _llen(client: redis.Redis, name: str) -> int:
    return int(client.llen(name))  # type: ignore[arg-type]  # redis-py's sync|async union


def _quantiles(listener: Listener) -> dict[str, float]:
    """p50/p99 upper bounds (ms) from the dispatch-latency histogram buckets."""
    buckets: list[tuple[float, float]] = []
    for metric in listener.metrics.registry.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket") and "dispatch_latency" in s.name:
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_ms_le"] = next((le * 1000 for le, c in buckets if c >= q * total), float("nan"))
    return out


def main() -> int:
    broker = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
    rows = {
        f"{fr}/{'validate' if v else 'skip'}": receive_cost(fr, validate=v)
        for fr in ("websocket", "sockjs")
        for v in (False, True)
    }
    print(f"3 MB frame ({len(FRAME.encode())} bytes), receive + STOMP parse, median of 5 (ms)")
    for name, ms in rows.items():
        print(f"  {name:20} {ms:8.1f}")
    burst = dispatch_burst(int(os.environ.get("MEASURE_EVENTS", "500")), broker)
    print(
        f"burst of {burst['events']} events -> tasks in Redis: {burst['seconds']} s, "
        f"{burst['events_per_s']} events/s, dispatch latency p50 <= {burst['p50_ms_le']} ms, "
        f"p99 <= {burst['p99_ms_le']} ms (queued behind the burst)"
    )
    print(
        f"single events (publish -> task in Redis, 50 one at a time): p50 {burst['single_event_p50_ms']} ms, "
        f"max {burst['single_event_max_ms']} ms"
    )
    print(
        json.dumps(
            {
                "frame_bytes": len(FRAME.encode()),
                "receive_ms": {k: round(v, 1) for k, v in rows.items()},
                "baseline": "utf-8 validation on (websocket-client default)",
                "ratio_plain": round(rows["websocket/validate"] / rows["websocket/skip"], 2),
                "ratio_sockjs": round(rows["sockjs/validate"] / rows["sockjs/skip"], 2),
                "burst": burst,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
