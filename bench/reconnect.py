"""Reconnect and liveness: Messenger back -> resubscribed (vs the first backoff); silent stall -> detected
(vs 2x heart-beat).

Method (one run; the Messenger stand-in in this process, a private redis-server as broker; ``python -m
listener`` with ``WEBSOCKET_CLIENT_RETRY_INTERVAL`` = R ms and ``WEBSOCKET_CLIENT_HEARTBEAT`` = H ms, SockJS
transport):

* Subscribed / not subscribed is read from the listener's ``/readyz`` (200 only while SUBSCRIBED and the
  broker answers), polled every 5 ms on a thread; the listener is started afresh for each trial so every
  trial begins at the *first* backoff (the exponent only resets after a session that stayed up 30 s).
* restart: the stand-in is stopped (every socket closes), stays down ``--down`` s, and starts again on the
  same port; figure = stand-in listening again -> ``/readyz`` 200. The backoff is full jitter (uniform(0,
  R*2^n)), so the figure is compared with R and with the ceiling at that attempt. The listener logs each
  delay it drew ("Attempting to reconnect in X s"); handshake = resubscribed - (that log line + X): probe +
  upgrade + CONNECT + SUBSCRIBE, the part the backoff does not explain.
* drop: ``drop_all()`` aborts the TCP connections, the stand-in stays up; figures = detection (-> 503) and
  resubscribed (-> 200), handshake as above.
* stall: ``stall(s)`` makes the stand-in silent (no heart-beats, no pongs, reads nothing); figure = stall
  start -> ``/readyz`` 503, against 2 x H. (Listener: WebSocket ping after H/2 idle, drop after 1.5 x H of
  silence.)

    python bench/reconnect.py [--trials 5] [--retry-ms 1000] [--heartbeat-ms 1000] [--down 0.5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as S

from messenger.server import MessengerServer

_DELAY = re.compile(r"^(\S+ \S+) INFO listener\.supervisor .*Attempting to reconnect in ([0-9.]+)s")


class ReadyWatch:
    """Polls /readyz every 5 ms; keeps (time.time(), status) at every change."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            code = S.http_status(self.url, timeout=0.3)
            if code != last:
                self.changes.append((time.time(), code))
                last = code
            time.sleep(0.005)

    def first(self, code: int, after: float, timeout: float) -> float:
        """The first time at or after ``after`` the status became ``code``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, c in list(self.changes):
                if t >= after and c == code:
                    return t
            time.sleep(0.005)
        raise TimeoutError(f"/readyz never answered {code} within {timeout:.0f}s")

    def now_is(self, code: int) -> bool:
        return bool(self.changes) and self.changes[-1][1] == code

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def delays(log: Path, after: float) -> list[tuple[float, float]]:
    """(logged at, delay s) for every backoff the listener drew after ``after``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = _DELAY.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= after - 0.01:
                out.append((t, float(m.group(2))))
    return out


def trial(
    kind: str,
    port: int,
    env: dict[str, str],
    args: argparse.Namespace,
    n: int,
    holder: dict[str, MessengerServer],
) -> dict[str, float]:
    lst, ready = S.start_listener(
        env,
        name=f"listener-rc-{kind}{n}",
        messenger_url=holder["s"].url,
        topic="bench-reconnect",
        retry_ms=args.retry_ms,
        heartbeat_ms=args.heartbeat_ms,
        gap_policy="resync",
    )
    watch = ReadyWatch(ready)
    try:
        S.wait_for(lambda: watch.now_is(200), 30, "listener subscribed", procs=(lst,))
        time.sleep(0.2)
        out: dict[str, float] = {}
        if kind == "restart":
            t0 = time.time()
            holder["s"].stop()
            time.sleep(args.down)
            holder["s"] = MessengerServer("127.0.0.1", port, heartbeat_ms=args.heartbeat_ms).start()
            t_back = time.time()
            t_ok = watch.first(200, t_back, 60)
            out["down_s"] = t_back - t0
            out["back_to_subscribed_ms"] = (t_ok - t_back) * 1000
        elif kind == "drop":
            t0 = time.time()
            holder["s"].drop_all()
            out["detect_ms"] = (watch.first(503, t0, 30) - t0) * 1000
            t_ok = watch.first(200, t0, 60)
            out["drop_to_subscribed_ms"] = (t_ok - t0) * 1000
        else:
            stall_s = 3 * args.heartbeat_ms / 1000
            t0 = time.time()
            holder["s"].stall(stall_s)
            out["detect_ms"] = (watch.first(503, t0, 30) - t0) * 1000
            time.sleep(max(0.0, t0 + stall_s - time.time()))
            watch.first(200, t0, 60)
            return out
        drawn = delays(lst.log, t0)
        if drawn:
            t_log, d = drawn[-1]
            out["last_delay_ms"] = d * 1000
            out["handshake_ms"] = (t_ok - (t_log + d)) * 1000
            out["attempts"] = float(len(drawn))
            out["ceiling_ms"] = args.retry_ms * 2 ** (len(drawn) - 1)
        return out
    finally:
        watch.stop()
        lst.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument(
        "--retry-ms", type=int, default=1000, help="WEBSOCKET_CLIENT_RETRY_INTERVAL (first backoff)"
    )
    ap.add_argument("--heartbeat-ms", type=int, default=1000, help="WEBSOCKET_CLIENT_HEARTBEAT")
    ap.add_argument("--down", type=float, default=0.5, help="seconds the stand-in stays down per restart")
    args = ap.parse_args()
    rid = S.run_id()
    res: dict[str, list[dict[str, float]]] = {"restart": [], "drop": [], "stall": []}
    with S.private_redis() as rs:
        env = S.base_env(rs.url, f"bench-rc-{rid}", f"bench-rc-{rid}")
        holder = {"s": MessengerServer("127.0.0.1", 0, heartbeat_ms=args.heartbeat_ms).start()}
        port = holder["s"].port
        try:
            for kind, rows in res.items():
                for n in range(args.trials if kind != "stall" else max(2, args.trials // 2)):
                    rows.append(trial(kind, port, env, args, n, holder))
        finally:
            holder["s"].stop()
    return report(res, args)


def col(rows: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


def report(res: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> int:
    hb2 = 2 * args.heartbeat_ms
    print(
        f"reconnect: python -m listener vs the Messenger stand-in (SockJS); WEBSOCKET_CLIENT_RETRY_INTERVAL="
        f"{args.retry_ms} ms (first backoff, full jitter), "
        f"WEBSOCKET_CLIENT_HEARTBEAT={args.heartbeat_ms} ms; "
        f"fresh listener per trial; /readyz polled every 5 ms"
    )
    print(S.header("ms", 46))
    rows = [
        (
            f"restart: back -> resubscribed (down {args.down:g}s)",
            col(res["restart"], "back_to_subscribed_ms"),
        ),
        ("  backoff drawn last (uniform 0..ceiling)", col(res["restart"], "last_delay_ms")),
        ("  handshake (resubscribed - backoff end)", col(res["restart"], "handshake_ms")),
        ("drop: abort -> detected (/readyz 503)", col(res["drop"], "detect_ms")),
        ("drop: abort -> resubscribed", col(res["drop"], "drop_to_subscribed_ms")),
        ("  backoff drawn (uniform 0..first backoff)", col(res["drop"], "last_delay_ms")),
        ("  handshake (resubscribed - backoff end)", col(res["drop"], "handshake_ms")),
        ("stall: silent -> detected (/readyz 503)", col(res["stall"], "detect_ms")),
    ]
    for label, vals in rows:
        print(S.row(label, vals, 46))
    attempts = col(res["restart"], "attempts")
    print(
        f"restart: {sum(attempts) / max(len(attempts), 1):.1f} backoff(s) drawn per outage on average "
        f"(ceilings {sorted(set(col(res['restart'], 'ceiling_ms')))} ms)"
    )
    back = S.summary(col(res["restart"], "back_to_subscribed_ms"))
    stall = S.summary(col(res["stall"], "detect_ms"))
    hs = S.summary(col(res["restart"], "handshake_ms") + col(res["drop"], "handshake_ms"))
    print(
        f"back -> resubscribed p50 {back['p50']:.0f} ms vs first backoff {args.retry_ms} ms "
        f"(x{back['p50'] / args.retry_ms:.2f}); handshake p50 {hs['p50']:.0f} ms; stall detected p50 "
        f"{stall['p50']:.0f} ms, max {stall['max']:.0f} ms vs 2x heart-beat {hb2} ms "
        f"(x{stall['max'] / hb2:.2f})"
    )

    def fig(vals: list[float]) -> dict[str, Any]:
        return {k: S.r3(v) for k, v in S.summary(vals).items() if k != "n"}

    print(
        json.dumps(
            {
                "bench": "reconnect",
                "trials": args.trials,
                "figures": {
                    "restart_back_to_subscribed_ms": fig(col(res["restart"], "back_to_subscribed_ms")),
                    "drop_detect_ms": fig(col(res["drop"], "detect_ms")),
                    "drop_to_subscribed_ms": fig(col(res["drop"], "drop_to_subscribed_ms")),
                    "handshake_ms": fig(
                        col(res["restart"], "handshake_ms") + col(res["drop"], "handshake_ms")
                    ),
                    "stall_detect_ms": fig(col(res["stall"], "detect_ms")),
                },
                "baseline": {"first_backoff_ms": args.retry_ms, "two_heartbeats_ms": hb2},
                "ratios": {
                    "restart_p50_over_first_backoff": S.r3(back["p50"] / args.retry_ms),
                    "stall_max_over_2hb": S.r3(stall["max"] / hb2),
                },
                "goal": {"stall_detect_within_2hb": bool(stall["max"] <= hb2)},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
