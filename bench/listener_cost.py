"""Listener CPU per frame: SockJS + STOMP decode, parse + validate, task call, real broker send (small and 3
MB).

Method (one process, one thread, a private redis-server as the broker):

* A frame is what the Messenger stand-in puts on the wire for the SockJS transport (the listener's default):
  ``a["MESSAGE\\n...headers...\\n\\n<body>\\u0000"]``. Per frame, in this thread, timed with
  ``time.thread_time_ns()`` (CPU of this thread only; waiting on the broker's reply costs nothing):
  ``proxysync.sockjs.decode_server_frame`` -> ``stomp.utils.parse_frame`` (what stomp.py's receiver runs) ->
  ``listener.dispatch.Item`` -> ``Dispatcher._handle`` (``parse_event`` + ``task_call`` +
  the shipped sender (``listener.sender.make_sender``: one LPUSH for a Redis broker) + metrics + the INFO log
  line, written to
  /dev/null by the listener's own log handler) + the ACK frame encoded for SockJS. Socket reads
  (websocket-client) are not in it: see ``python -m listener.measure`` for the 3 MB receive itself.
* Small frames: CACHE_DELETE_INVALID (~250 B body). 3 MB frames: the same event with a padding field so the
  STOMP frame is just under ``WEBSOCKET_CLIENT_MAX_FRAME`` (3 MiB), with its own ``eventId`` and without one
  (then the listener hashes the canonical body for the event id).
* Baseline (the floor any listener pays), same frames, same thread: ``json.loads(body)`` + a bare
  ``Celery.send_task`` of the same call (no retry policy, no validation, no events, no log, no metrics).
* Peak RSS: ``ru_maxrss`` after the small frames and after the 3 MB frames.

Goals: <= 150 us CPU per small frame; a 3 MB frame in <= 50 ms.

    python bench/listener_cost.py [--frames 3000] [--big 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as S
from stomp.utils import parse_frame

from listener.dispatch import Dispatcher, Item
from listener.logs import setup_logging
from listener.metrics import Metrics
from listener.sender import CelerySender, make_sender
from listener.spool import Spool
from messenger.frames import encode_frame
from proxysync import constants as C
from proxysync import sockjs

MAX_FRAME = 3 * 1024 * 1024
SMALL_GOAL_US, BIG_GOAL_MS = 150.0, 50.0


def wire(i: int, body: str, dest: str) -> str:
    """One SockJS ``a[...]`` message carrying a STOMP MESSAGE, as the stand-in sends it."""
    headers = {
        "content-type": "application/json",
        "destination": dest,
        "message-id": f"m{i}",
        "subscription": "proxysync-1",
        "ack": f"m{i}",
    }
    return sockjs.encode_messages([encode_frame("MESSAGE", headers, body.encode()).decode()])


def big_body(i: int, run: str, with_id: bool) -> str:
    key = S.bench_key(run, i)
    small = S.event_body(i, run, key)
    body = json.loads(S.event_body(i, run, key, pad=MAX_FRAME - len(small) - 400))
    if not with_id:
        del body["payload"]["eventId"]
    return json.dumps(body, separators=(",", ":"))


def ours(dispatcher: Dispatcher) -> Callable[[str], None]:
    def ack_frame(headers: dict[str, str]) -> None:
        sockjs.encode_client_messages([f"ACK\nid:{headers.get('ack')}\n\n\x00"])

    def one(text: str) -> None:
        frame = sockjs.decode_server_frame(text)
        for msg in frame.messages:
            f = parse_frame(msg.encode("utf-8").rstrip(b"\x00"))
            headers: dict[str, str] = dict(f.headers)

            def ack(h: dict[str, str] = headers) -> None:
                ack_frame(h)

            dispatcher._handle(Item(received_at=time.time(), headers=headers, body=f.body or b"", ack=ack))

    return one


def floor(url: str) -> tuple[Callable[[str], None], Any]:
    """Baseline: JSON decode of the body + the bare Celery publish of the same task call (anonymous exchange,
    no task-sent event, no retry policy): the least a listener built on Celery's Redis transport can pay."""
    from celery import Celery

    app = Celery("bench-floor", set_as_current=False)
    app.conf.update(broker_url=url, task_serializer="json", accept_content=["json"], task_ignore_result=True)
    queue = C.queue_name(C.QUEUE_INVALIDATIONS, "bench-floor")

    def one(text: str) -> None:
        frame = sockjs.decode_server_frame(text)
        for msg in frame.messages:
            _head, _, body = msg.partition("\n\n")
            data = json.loads(body.rstrip("\x00"))
            p = data["payload"]
            app.send_task(
                C.TASK_DELETE,
                kwargs={"key": p["key"], "event_id": p.get("eventId", "x"), "event_time": data["timestamp"]},
                task_id=p.get("eventId"),
                queue=queue,
                exchange="",
                routing_key=queue,
            )

    return one, app


def parse_only() -> Callable[[str], None]:
    """Our per-frame work before the broker: SockJS decode, STOMP parse, parse_event (pydantic), task_call."""
    from proxysync.events import parse_event, task_call

    def one(text: str) -> None:
        for msg in sockjs.decode_server_frame(text).messages:
            f = parse_frame(msg.encode("utf-8").rstrip(b"\x00"))
            task_call(parse_event(f.body or b""), received_at=time.time())

    return one


def send_variants(shipped: Any, sender: CelerySender) -> dict[str, Callable[[str], None]]:
    """The send alone: as shipped (Redis fast path), Celery's send_task as the listener used it before, and
    as before 267eb49 (named exchange, task-sent event). Interleaved round-robin: noise hits all alike."""
    from proxysync.events import parse_event, task_call

    def call_of(text: str) -> Any:
        msg = sockjs.decode_server_frame(text).messages[0]
        return task_call(parse_event(msg.partition("\n\n")[2].rstrip("\x00")), received_at=time.time())

    def send(text: str, exchange: str | None, events: bool) -> None:
        call = call_of(text)
        q = C.queue_name(call.queue)
        sender.app.conf.task_send_sent_event = events
        sender.app.send_task(
            call.name,
            kwargs=call.kwargs,
            task_id=call.task_id,
            queue=q,
            exchange=q if exchange is None else exchange,
            routing_key=q,
            ignore_result=True,
        )
        sender.app.conf.task_send_sent_event = False  # as listener/sender.build_app configures it

    return {
        "send as shipped (LPUSH fast path)": lambda t: shipped.send(call_of(t)),
        "before: CelerySender.send (send_task)": lambda t: sender.send(call_of(t)),
        "before 267eb49: named exchange + sent event": lambda t: send(t, None, True),
    }


def cpu_interleaved(fns: dict[str, Callable[[str], None]], frames: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i, f in enumerate(frames):
        name = names[i % len(names)]
        t0 = time.thread_time_ns()
        fns[name](f)
        out[name].append((time.thread_time_ns() - t0) / 1000)
    return out


def cpu(fn: Callable[[str], None], frames: list[str]) -> list[float]:
    """CPU microseconds of this thread per frame."""
    out = []
    for f in frames:
        t0 = time.thread_time_ns()
        fn(f)
        out.append((time.thread_time_ns() - t0) / 1000)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--frames", type=int, default=3000, help="small frames (after 300 warm-up frames)")
    ap.add_argument("--big", type=int, default=5, help="3 MB frames of each kind")
    ap.add_argument("--profile", action="store_true", help="cProfile the small-frame path, print top costs")
    args = ap.parse_args()
    rid = S.run_id()
    dest = "/topic/bench-cost"
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
    setup_logging(
        "text", level=logging.INFO, stream=devnull
    )  # the listener's handler; lines cost what they cost
    res: dict[str, Any] = {}
    prof_lines: list[str] = []
    with S.private_redis() as rs, tempfile.TemporaryDirectory() as tmp:
        os.environ[C.QUEUE_PREFIX_ENV] = f"bench-cost-{rid}"
        shipped = make_sender(rs.url)
        sender = CelerySender(rs.url)
        dispatcher = Dispatcher(shipped, Spool(Path(tmp) / "spool.sqlite3"), Metrics())
        go, (base, app) = ours(dispatcher), floor(rs.url)
        warm = [wire(i, S.event_body(i, f"{rid}w", S.bench_key(rid, i)), dest) for i in range(300)]
        small = [wire(i, S.event_body(i, rid, S.bench_key(rid, i)), dest) for i in range(args.frames)]
        small_b = [wire(i, S.event_body(i, rid + "f", S.bench_key(rid, i)), dest) for i in range(args.frames)]
        cpu(go, warm)
        cpu(base, warm)
        rss0 = rss_mb()
        t_wall = time.perf_counter()
        res["small_ours"] = cpu(go, small)
        res["small_wall_s"] = time.perf_counter() - t_wall
        res["small_base"] = cpu(base, small_b)
        res["rss_small_mb"] = rss_mb()
        res["parse_only"] = cpu(parse_only(), small)
        frames = [wire(i, S.event_body(i, f"{rid}s", S.bench_key(rid, i)), dest) for i in range(args.frames)]
        # incl. parse: subtract parse_only
        res["send"] = cpu_interleaved(send_variants(shipped, sender), frames)
        if args.profile:
            prof = cProfile.Profile()
            more = [
                wire(i, S.event_body(i, rid + "p", S.bench_key(rid, i)), dest) for i in range(args.frames)
            ]
            prof.runcall(cpu, go, more)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
            text = buf.getvalue().splitlines()
            start = next((i for i, ln in enumerate(text) if ln.strip().startswith("ncalls")), 0)
            prof_lines = [ln.replace(str(S.ROOT) + "/", "") for ln in text[start:] if ln.strip()]
        for kind, with_id in (("big_id", True), ("big_noid", False)):
            frames = [wire(i, big_body(i, f"{rid}{kind}", with_id), dest) for i in range(args.big)]
            res[f"{kind}_bytes"] = len(frames[0])
            res[kind] = [v / 1000 for v in cpu(go, frames)]
            res[f"{kind}_base"] = [v / 1000 for v in cpu(base, frames)]
            del frames
        res["rss_big_mb"] = rss_mb()
        res["rss_start_mb"] = rss0
        sender.close()
        shipped.close()
        app.close()
    devnull.close()
    return report(res, args, prof_lines)


def report(res: dict[str, Any], args: argparse.Namespace, prof_lines: list[str]) -> int:
    print(
        f"listener_cost: CPU of one thread per frame (thread_time), SockJS wire text -> task in a private "
        "Redis "
        f"broker; {args.frames} small frames, {args.big} x 3 MB frames per kind"
    )
    print(S.header("small frame, us CPU", 44))
    print(S.row("ours: decode+parse+validate+send+log+ACK", res["small_ours"], 44))
    print(S.row("baseline: json.loads + bare send_task", res["small_base"], 44))
    print("breakdown (same frames):")
    print(S.row("  decode + parse + validate + task_call", res["parse_only"], 44))
    for label, vals in res["send"].items():
        print(S.row(f"  {label}", vals, 44))
    print("  (send rows include decode+parse+validate: subtract the row above)")
    print(S.header("3 MB frame, ms CPU", 44))
    for kind, label in (
        ("big_id", "ours, payload.eventId given"),
        ("big_noid", "ours, no id (hash of the body)"),
    ):
        print(S.row(f"{label} ({res[kind + '_bytes'] / 2**20:.2f} MiB)", res[kind], 44))
        print(S.row("  baseline: json.loads + bare send_task", res[kind + "_base"], 44))
    o = S.summary(res["small_ours"])
    b = S.summary(res["small_base"])
    big = max(S.summary(res["big_id"])["p50"], S.summary(res["big_noid"])["p50"])
    bigb = max(S.summary(res["big_id_base"])["p50"], S.summary(res["big_noid_base"])["p50"])
    wall_rate = args.frames / res["small_wall_s"]
    print(
        f"small frames: {o['p50']:.0f} us p50 (goal <= {SMALL_GOAL_US:.0f}) -> one dispatcher thread "
        "tops out "
        f"near {1e6 / max(o['p50'], 1):.0f} frames/s of CPU; wall clock here {wall_rate:.0f}/s incl. broker "
        "round trips"
    )
    print(f"3 MB frames: {big:.1f} ms p50 worst kind (goal <= {BIG_GOAL_MS:.0f})")
    print(
        f"peak RSS: {res['rss_start_mb']:.0f} MiB after warm-up, "
        f"{res['rss_small_mb']:.0f} MiB after the small "
        f"frames, {res['rss_big_mb']:.0f} MiB after the 3 MB frames"
    )
    if prof_lines:
        print("profile (cProfile, small frames, by own time):")
        for ln in prof_lines:
            print("  " + ln)
    figures = {
        "small_us": {k: S.r3(v) for k, v in o.items() if k != "n"},
        "big_ms_with_id": {k: S.r3(v) for k, v in S.summary(res["big_id"]).items() if k != "n"},
        "big_ms_no_id": {k: S.r3(v) for k, v in S.summary(res["big_noid"]).items() if k != "n"},
        "rss_mb": {
            "warm": round(res["rss_start_mb"], 1),
            "small": round(res["rss_small_mb"], 1),
            "big": round(res["rss_big_mb"], 1),
        },
        "small_wall_per_s": round(wall_rate, 1),
        "parse_only_us_p50": S.r3(S.summary(res["parse_only"])["p50"]),
        "send_us_p50": {k: S.r3(S.summary(v)["p50"]) for k, v in res["send"].items()},
    }
    baseline = {"small_us_p50": S.r3(b["p50"]), "big_ms_p50": S.r3(bigb)}
    ratios = {"small_p50": S.r3(o["p50"] / b["p50"]), "big_p50": S.r3(big / bigb)}
    goal = {
        "small_us": SMALL_GOAL_US,
        "big_ms": BIG_GOAL_MS,
        "small_met": o["p50"] <= SMALL_GOAL_US,
        "big_met": big <= BIG_GOAL_MS,
    }
    print(
        json.dumps(
            {
                "bench": "listener_cost",
                "figures": figures,
                "baseline": baseline,
                "ratios": ratios,
                "goal": goal,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
