"""``python -m messenger.measure``: how fast the stand-in delivers, measured with a real stomp.py client.

Prints publish -> receive latency (small events, in-process publish, raw ``/ws`` and ``{ep}/websocket``),
throughput for a burst, and the time one 10 MB body takes end to end. Numbers only; nothing passes or fails.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

import stomp

from messenger.server import MessengerServer


class _Inbox(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.count = 0
        self.arrived = threading.Condition()

    def on_message(self, frame: Any) -> None:
        with self.arrived:
            self.count += 1
            self.arrived.notify_all()

    def wait(self, n: int, timeout: float = 60.0) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.count >= n, timeout):
                raise RuntimeError(f"only {self.count}/{n} messages arrived")


def _measure(server: MessengerServer, path: str) -> dict[str, float]:
    conn = stomp.WSStompConnection([("127.0.0.1", server.port)], ws_path=path, auto_decode=False)
    inbox = _Inbox()
    conn.set_listener("inbox", inbox)
    conn.connect(wait=True)
    conn.subscribe("/topic/m", id="0")
    while not server.stats()["subscriptions"]:
        time.sleep(0.01)
    body = json.dumps({"payload": {"type": "ROUTES_REFRESH"}, "source": "measure"})
    latencies = []
    for _ in range(200):
        target = inbox.count + 1
        start = time.perf_counter()
        server.publish("/topic/m", body)
        inbox.wait(target)
        latencies.append((time.perf_counter() - start) * 1000)
    burst = 2000
    start = time.perf_counter()
    target = inbox.count + burst
    for _ in range(burst):
        server.publish("/topic/m", body)
    inbox.wait(target)
    rate = burst / (time.perf_counter() - start)
    big = b"x" * (10 * 1024 * 1024)
    target = inbox.count + 1
    start = time.perf_counter()
    server.publish("/topic/m", big)
    inbox.wait(target)
    big_ms = (time.perf_counter() - start) * 1000
    conn.disconnect()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies), "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
            "burst_msgs_per_s": rate, "ten_mb_ms": big_ms}


def main() -> None:
    server = MessengerServer(heartbeat_ms=0).start()
    try:
        results = {path: _measure(server, path) for path in ("/ws", "/messenger/websocket/websocket")}
    finally:
        server.stop()
    print(f"{'endpoint':34} {'p50 ms':>8} {'p99 ms':>8} {'burst msg/s':>12} {'10 MB ms':>9}")
    for path, r in results.items():
        print(f"{path:34} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['burst_msgs_per_s']:12.0f} "
              f"{r['ten_mb_ms']:9.0f}")
    figures = {p: {k: round(v, 2) for k, v in r.items()} for p, r in results.items()}
    print(json.dumps({"messenger_delivery": figures,
                      "method": "in-process publish -> stomp.py WSStompConnection on_message, 127.0.0.1"}))


if __name__ == "__main__":
    main()
