"""Shared helpers for the pipeline benchmarks (not a benchmark itself: ``make bench`` skips ``_*.py``).

Why they exist: every pipeline bench runs the real processes (``python -m listener``, ``celery -A tasks
worker``) against a *private* redis-server (``proxysync.redis_server.RedisServer``) and a unique queue prefix,
cache prefix and topic, so nothing another engineer runs on the machine's Redis/RabbitMQ can interfere, and
everything it starts is stopped (by its own process group id) when the bench ends.

Timestamps compared across processes are ``time.time()`` (CLOCK_REALTIME, one clock per machine) or Redis
``TIME`` (the feed's ``applied_at``, millisecond resolution).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxysync import constants as C  # noqa: E402 - after the sys.path line (python bench/x.py)
from proxysync.redis_server import RedisServer, free_port  # noqa: E402

RABBIT_WS = "ws://127.0.0.1:15674/ws"
RABBIT_STOMP = ("127.0.0.1", 61613)


# --- figures ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": pct(values, 0.5),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "max": max(values) if values else float("nan"),
        "n": float(len(values)),
    }


def row(label: str, values: list[float], width: int = 34) -> str:
    s = summary(values)
    return (
        f"{label:<{width}}"
        + "".join(f"{s[k]:>9.2f}" for k in ("p50", "p90", "p99", "max"))
        + f"{len(values):>7}"
    )


def header(unit: str = "ms", width: int = 34) -> str:
    return f"{unit:<{width}}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>7}"


def num(reply: Any) -> int:
    """A Redis integer reply (redis-py types sync replies as ``Awaitable[int] | int``)."""
    return int(reply)


def r3(x: float) -> float | None:
    return None if x != x else round(x, 3)  # NaN -> null in the JSON line


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# --- processes ---------------------------------------------------------------------------------------------


class Proc:
    """A child in its own session (process group); stopped by its own group id, SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=str(ROOT), stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # prefork children left behind, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._fh.close()

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def wait_for(
    pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.05, procs: tuple[Proc, ...] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if not p.alive():
                raise RuntimeError(
                    f"{p.name} exited ({p.proc.returncode}) while waiting for {what}:\n{p.tail()}"
                )
        time.sleep(poll)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def http_status(url: str, timeout: float = 0.5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def base_env(redis_url: str, queue_prefix: str, cache_prefix: str, **extra: str) -> dict[str, str]:
    """What every child gets: the private Redis as broker and cache, our own queue and cache prefixes."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("WEBSOCKET_CLIENT_", "CELERY_", "CACHE_", "LISTENER_", "TASK_", "IAM_")):
            del env[k]  # nothing from the caller's shell changes what is measured
    env.update(
        {
            "CELERY_BROKER_URL": redis_url,
            "CACHE_REDIS_URL": redis_url,
            "CACHE_PREFIX": cache_prefix,
            C.QUEUE_PREFIX_ENV: queue_prefix,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        }
    )
    env.update(extra)
    return env


def start_listener(
    env: dict[str, str],
    *,
    name: str = "listener",
    messenger_url: str,
    transport: str = "auto",
    topic: str,
    stomp_host: str | None = None,
    endpoint: str = C.DEFAULT_ENDPOINT,
    retry_ms: int = 1000,
    heartbeat_ms: int = 10000,
    log_level: str = "INFO",
    gap_policy: str = "none",
) -> tuple[Proc, str]:
    """``python -m listener`` pointed at a Messenger; returns the process and its /readyz URL."""
    port = free_port()
    spool = OUT / "run" / f"{name}-{uuid.uuid4().hex[:6]}.sqlite3"
    spool.parent.mkdir(parents=True, exist_ok=True)
    e = dict(env)
    e.update(
        {
            "WEBSOCKET_CLIENT_BASEURL": messenger_url,
            "WEBSOCKET_CLIENT_ENDPOINT": endpoint,
            "WEBSOCKET_CLIENT_TRANSPORT": transport,
            "WEBSOCKET_CLIENT_TOPIC": topic,
            "WEBSOCKET_CLIENT_RETRY_INTERVAL": str(retry_ms),
            "WEBSOCKET_CLIENT_HEARTBEAT": str(heartbeat_ms),
            "WEBSOCKET_CLIENT_GAP_POLICY": gap_policy,
            "LISTENER_HTTP_PORT": str(port),
            "LISTENER_SPOOL_PATH": str(spool),
        }
    )
    if stomp_host:
        e["WEBSOCKET_CLIENT_STOMP_HOST"] = stomp_host
    proc = Proc(
        name, [sys.executable, "-m", "listener", "--log-level", log_level], e, OUT / "logs" / f"{name}.log"
    )
    return proc, f"http://127.0.0.1:{port}/readyz"


def start_worker(
    env: dict[str, str],
    *,
    node: str,
    queue_prefix: str,
    concurrency: int = 1,
    pool: str = "prefork",
    app: str = "tasks",
    events: bool = True,
    log_level: str = "INFO",
    wrap: list[str] | None = None,
) -> Proc:
    """``celery -A tasks worker`` on our queues only (``wrap`` prefixes the interpreter, e.g. cProfile)."""
    queues = ",".join(C.queue_name(s, queue_prefix) for s in (C.QUEUE_INVALIDATIONS, C.QUEUE_ROUTES))
    argv = [
        sys.executable,
        *(wrap or []),
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-n",
        node,
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        log_level,
    ]
    if events:
        argv.append("-E")
    return Proc(
        node.split("@", maxsplit=1)[0], argv, env, OUT / "logs" / f"{node.split('@', maxsplit=1)[0]}.log"
    )


def node_name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"


def ping_app(redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bench-ping", set_as_current=False)
    app.conf.update(broker_url=redis_url, accept_content=["json"], task_serializer="json")
    return app


def wait_worker(app: Any, node: str, proc: Proc, timeout: float = 60.0) -> None:
    def pong() -> bool:
        try:
            return any(node in r for r in app.control.ping(destination=[node], timeout=0.5) or [])
        except Exception:
            return False

    wait_for(pong, timeout, f"worker {node}", procs=(proc,))


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def rabbit_answers() -> bool:
    for host, port in (("127.0.0.1", 15674), RABBIT_STOMP):
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            return False
    return True


class RabbitPublisher:
    """SEND over RabbitMQ's STOMP port (the listener under test subscribes over Web-STOMP)."""

    def __init__(self) -> None:
        import stomp

        self.conn = stomp.Connection12([RABBIT_STOMP], heartbeats=(0, 0), vhost="/")
        self.conn.connect("guest", "guest", wait=True)

    def publish(self, destination: str, body: str) -> None:
        self.conn.send(destination, body, content_type="application/json")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.disconnect()


def event_body(i: int, run: str, key: str, *, ts: float | None = None, pad: int = 0) -> str:
    """A CACHE_DELETE_INVALID frame body in the original's shape; ``timestamp`` = float epoch seconds."""
    import json

    payload: dict[str, Any] = {"type": "CACHE_DELETE_INVALID", "key": key, "eventId": f"b{run}-{i}"}
    if pad:
        payload["blob"] = "x" * pad
    return json.dumps(
        {"payload": payload, "timestamp": ts if ts is not None else time.time(), "source": "bench"},
        separators=(",", ":"),
    )


def bench_key(run: str, i: int) -> str:
    return f"bench{run}#app{i % 10}#/route/{i}#CONFIG#prod"


def chart(path: Path, title: str, series: dict[str, list[float]], xlabel: str = "ms") -> str:
    """A PNG of latency distributions (CDFs), when matplotlib is installed (``pip install -e .[bench]``)."""
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return "chart skipped (matplotlib is not installed: pip install -e '.[bench]')"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, values in series.items():
        if values:
            xs = sorted(values)
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of events")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


# --- processes started with multiprocessing (spawn) ------------------------------------------------------


def gateway_proc(url: str, prefix: str, keys: list[str], pipe: Connection) -> None:
    """A gateway: hold keys in a NearCache; per dropped key stamp (event_id, event_time, applied_ms, now)."""
    import redis

    from cache import NearCache, RouteAuthCache
    from cache.feed import FeedEntry

    client = redis.Redis.from_url(url)
    near = NearCache(RouteAuthCache(client, prefix=prefix), name="bench-gw", maxsize=200_000, ttl=3600)
    drops: dict[str, tuple[str, float, int, float]] = {}

    def stamp(op: str, dropped: list[str], entry: FeedEntry | None) -> None:
        now = time.time()
        if entry is None:
            return
        et = float(entry.extra.get("event_time") or "nan")
        for key in dropped:
            drops.setdefault(key, (entry.event_id or "", et, entry.applied_at_ms, now))

    near.on_drop(stamp)
    for k in keys:
        near.get(k)
    pipe.send(("ready", len(near), near.following))
    while True:
        msg = pipe.recv()
        if msg == "collect":
            pipe.send(("drops", dict(drops)))
            drops.clear()
        elif isinstance(msg, tuple) and msg[0] == "load":
            for k in msg[1]:
                near.get(k)
            pipe.send(("ready", len(near), near.following))
        else:
            break
    near.close()
    client.close()


def baseline_listener_proc(
    url: str,
    prefix: str,
    target_url: str,
    transport: str,
    destination: str,
    stomp_host: str | None,
    pipe: Connection,
) -> None:
    """The original's shape: one STOMP subscriber that applies each event to Redis itself, no Celery hop.

    Same transport classes as the listener (stomp.py over websocket-client, SockJS framing when ``auto`` finds
    it) so the difference to the listener is exactly dispatcher + broker + worker.
    """
    import threading

    import redis
    from stomp.listener import ConnectionListener

    from cache import Op, RouteAuthCache
    from cache.names import F_EVENT_TIME
    from listener.transport import MessengerConnection, MessengerTransport, resolve_target
    from proxysync.events import EventError, parse_event

    client = redis.Redis.from_url(url)
    cache = RouteAuthCache(client, prefix=prefix)
    received: dict[str, float] = {}
    connected = threading.Event()

    class Sub(ConnectionListener):  # type: ignore[misc]
        def on_connected(self, frame: Any) -> None:
            connected.set()

        def on_message(self, frame: Any) -> None:
            now = time.time()
            try:
                event = parse_event(frame.body or b"")
            except EventError:
                return
            received[event.event_id] = now
            cache.apply(
                Op.DELETE,
                key=event.payload.key,
                event_id=event.event_id,
                feed_fields={F_EVENT_TIME: repr(event.event_time() or now)},
            )

    target = resolve_target(transport, target_url, token=None, ca_bundle=None)
    tr = MessengerTransport(
        target,
        header=[],
        sslopt={},
        vhost=stomp_host,
        max_frame=3 * 1024 * 1024,
        idle_s=0,
        connect_timeout_s=10.0,
    )
    conn = MessengerConnection(tr, heartbeats=(0, 0))
    conn.set_listener("bench", Sub())
    conn.connect(with_connect_command=True, headers={})
    connected.wait(10)
    conn.subscribe(destination, id="bench-baseline", ack="auto")
    time.sleep(0.3)  # SUBSCRIBE has no reply; give the broker a moment to register it
    pipe.send(("ready", connected.is_set()))
    while True:
        msg = pipe.recv()
        if msg == "collect":
            pipe.send(("received", dict(received)))
            received.clear()
        else:
            break
    with contextlib.suppress(Exception):
        conn.disconnect()
    tr.disconnect_socket()
    client.close()


class EventCapture:
    """Celery task events (``task-sent`` from the listener, ``task-received`` from the worker) on a thread.

    The worker runs with ``-E`` (as ``proxysync up`` runs it) and the listener publishes ``task-sent`` because
    ``celeryconfig`` turns it on; both carry the sender's ``time.time()``.
    """

    def __init__(self, redis_url: str, kinds: tuple[str, ...] = ("task-sent", "task-received")) -> None:
        import threading

        self.app = ping_app(redis_url)
        self.stamps: dict[str, dict[str, float]] = {k: {} for k in kinds}
        self._receiver: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        def on(event: dict[str, Any]) -> None:
            table = self.stamps.get(event.get("type", ""))
            if table is not None and "uuid" in event:
                table.setdefault(event["uuid"], float(event["timestamp"]))

        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={k: on for k in self.stamps})
            self._ready.set()
            with contextlib.suppress(Exception):
                self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)


def _build_noop_app() -> Any:
    """Raw Celery baseline: the shipped ``celeryconfig`` (queues from ``PROXYSYNC_QUEUE_PREFIX``, acks_late,
    prefetch, JSON, events) and one task that does nothing, with the same ack policy as ours."""
    from celery import Celery

    import celeryconfig

    app = Celery("bench-noop", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.update(celeryconfig.routing())

    @app.task(  # type: ignore[untyped-decorator]
        name="bench.noop", acks_late=True, reject_on_worker_lost=True, ignore_result=True, shared=False
    )
    def noop(**kwargs: Any) -> None:
        return None

    return app


def __getattr__(name: str) -> Any:
    """``celery -A _support:noop_app worker`` builds the baseline app on first access (no import-time app)."""
    if name == "noop_app":
        app = _build_noop_app()
        globals()["noop_app"] = app
        return app
    raise AttributeError(name)
