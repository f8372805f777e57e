"""``proxysync up``: the whole local pipeline as supervised child processes.

Redis (the one at ``CELERY_BROKER_URL`` if it answers, else an embedded redis-server on a free port), the
Messenger stand-in, the listener, one Celery worker and Flower. Each child runs in its own session, so its
process group (Celery's prefork children included) is signalled as one and a terminal's Ctrl-C reaches only
us. Each logs to a file in the run directory and is probed for readiness by what it serves (HTTP health
endpoints, a Celery ping addressed to our own worker). A child that dies is reported with the tail of its log
and restarted, a few times. Ctrl-C or SIGTERM stops every group (SIGTERM, a grace period, then SIGKILL for
stragglers) so nothing is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxysync import constants as C
from proxysync.redis_server import RedisServer, free_port, redis_answers
from proxysync.status import redact

# The embedded Redis goes last, after the listener drained.
STOP_ORDER = ("flower", "listener", "worker", "messenger")
MAX_DEATHS = 3  # restarts allowed per DEATH_WINDOW before the stack gives up on a child
DEATH_WINDOW = 60.0


class StackSettings(BaseSettings):
    """Everything ``proxysync up`` reads from the environment, with its default."""

    model_config = SettingsConfigDict(extra="ignore")

    celery_broker_url: str = "redis://localhost:6379/0"
    cache_redis_url: str | None = None  # defaults to the broker's Redis
    cache_prefix: str = "proxysync"
    proxysync_queue_prefix: str = C.DEFAULT_QUEUE_PREFIX
    websocket_client_topic: str = C.DEFAULT_TOPIC
    websocket_client_gap_policy: str = "resync"
    # Preferred ports: a taken one is replaced by a free port (printed), so the stack runs beside others.
    messenger_port: int = 8090
    listener_http_port: int = 8081
    flower_port: int = 5555
    worker_metrics_port: int = 9808
    messenger_token: str | None = None


def port_or_free(preferred: int) -> int:
    """``preferred`` when nothing listens on it, else a free port (also for 0)."""
    if preferred <= 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` making the child get SIGTERM when ``up`` dies, even by SIGKILL (no orphans)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


DIE_WITH_PARENT = _death_signal()


def http_ok(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own http:// URLs
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Child:
    """One supervised process (and its process group)."""

    name: str
    argv: list[str]
    where: str
    probe: Callable[[], bool]
    log: Path
    after: str | None = None  # started once this child is ready (the listener waits for the Messenger)
    proc: subprocess.Popen[bytes] | None = None
    given_up: bool = False
    started: float = 0.0
    ready_at: float | None = None
    deaths: deque[float] = field(default_factory=deque)

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=DIE_WITH_PARENT)  # noqa: PLW1509 - prctl only
        self.started = time.monotonic()
        self.ready_at = None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("      | " + line for line in text[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)  # start_new_session: pgid == pid


class Stack:
    """Starts, probes, supervises and stops the children; ``out`` prints one line."""

    def __init__(self, settings: StackSettings, *, out: Callable[[str], None], stop: threading.Event,
                 flower: bool = True, concurrency: int = 1) -> None:
        self.settings = settings
        self.out = out
        self.stop = stop
        self.with_flower = flower
        self.concurrency = concurrency
        self.run_id = uuid.uuid4().hex[:8]
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"proxysync-up-{self.run_id}-"))
        self.redis: RedisServer | None = None
        self.children: list[Child] = []
        self.env: dict[str, str] = {}
        self.failed: str | None = None
        self._celery: Any = None
        self.hurry = threading.Event()  # set by a second Ctrl-C: no grace period
        self.started_ms = 0

    # -- set-up --------------------------------------------------------------------------------------------

    def resolve_redis(self) -> None:
        """Use the broker's Redis if it answers, else start the embedded one and point everything at it."""
        s = self.settings
        broker = s.celery_broker_url
        if broker.startswith(("redis://", "rediss://")):
            if redis_answers(broker):
                self.out(f"  redis      {broker}  (answered PING; using it)")
            else:
                self.out(f"  redis      nothing answers at {broker}: starting the embedded redis-server ...")
                self.redis = RedisServer().start()
                broker = self.redis.url
                pid = self.redis.proc.pid if self.redis.proc else "?"
                self.out(f"  redis      {broker}  (embedded, pid {pid}, dir {self.redis.dir})")
        else:
            self.out(f"  broker     {redact(broker)}  (not Redis: used as given)")
        # As the worker does: CACHE_REDIS_URL, else the broker's Redis, else the local default.
        cache_url = C.cache_url(s.cache_redis_url, broker)
        if not redis_answers(cache_url):
            if self.redis is None:
                self.redis = RedisServer().start()
            self.out(f"  cache      nothing answers at {cache_url}: using the embedded {self.redis.url}")
            cache_url = self.redis.url
        elif cache_url != broker:
            self.out(f"  cache      {cache_url}  (answered PING; using it)")
        self.broker_url, self.cache_url = broker, cache_url

    def build(self) -> None:
        s = self.settings
        py = sys.executable
        self.ports = {
            "messenger": port_or_free(s.messenger_port),
            "listener": port_or_free(s.listener_http_port),
            "flower": port_or_free(s.flower_port),
            "metrics": port_or_free(s.worker_metrics_port),
        }
        self.messenger_url = f"http://127.0.0.1:{self.ports['messenger']}"
        self.listener_url = f"http://127.0.0.1:{self.ports['listener']}"
        self.flower_url = f"http://127.0.0.1:{self.ports['flower']}"
        self.node = f"up-{self.run_id}@{socket.gethostname()}"
        self.queues = [C.queue_name(C.QUEUE_INVALIDATIONS, s.proxysync_queue_prefix),
                       C.queue_name(C.QUEUE_ROUTES, s.proxysync_queue_prefix)]
        overrides = {
            "CELERY_BROKER_URL": self.broker_url,
            "CACHE_REDIS_URL": self.cache_url,
            "CACHE_PREFIX": s.cache_prefix,
            C.QUEUE_PREFIX_ENV: s.proxysync_queue_prefix,
            "WEBSOCKET_CLIENT_ENABLED": "true",
            "WEBSOCKET_CLIENT_BASEURL": self.messenger_url,
            "LISTENER_HTTP_PORT": str(self.ports["listener"]),
            "LISTENER_SPOOL_PATH": str(self.run_dir / "spool.sqlite"),
            "WORKER_METRICS_PORT": str(self.ports["metrics"]),
            "PYTHONUNBUFFERED": "1",
        }
        if s.messenger_token:
            overrides["WEBSOCKET_CLIENT_TOKEN"] = s.messenger_token
        if not os.environ.get("WEBSOCKET_CLIENT_RETRY_INTERVAL"):
            overrides["WEBSOCKET_CLIENT_RETRY_INTERVAL"] = "1000"  # reconnect to a restarted stand-in fast
        # The children get it, and so does this process (celeryconfig reads the environment when imported).
        os.environ.update(overrides)
        self.env = dict(os.environ)
        token = ["--token", s.messenger_token] if s.messenger_token else []
        log = self.run_dir.joinpath
        self.children = [
            Child("messenger", [py, "-m", "proxysync", "messenger", "--host", "127.0.0.1",
                                "--port", str(self.ports["messenger"]), *token],
                  f"{self.messenger_url}  (stand-in: SockJS {self.messenger_url}{C.DEFAULT_ENDPOINT}, "
                  "POST /publish)", lambda: http_ok(f"{self.messenger_url}/healthz"), log("messenger.log")),
            Child("listener", [py, "-m", "listener"],
                  f"{self.listener_url}/metrics  (/healthz, /readyz)",
                  lambda: http_ok(f"{self.listener_url}/readyz"), log("listener.log"), after="messenger"),
            Child("worker", [py, "-m", "celery", "-A", "tasks", "worker", "-E", "-n", self.node,
                             "-Q", ",".join(self.queues), "-c", str(self.concurrency), "--loglevel", "INFO"],
                  f"node {self.node}, queues {','.join(self.queues)}, "
                  f"metrics http://127.0.0.1:{self.ports['metrics']}/metrics",
                  self._worker_pong, log("worker.log")),
        ]
        if self.with_flower:
            self.children.append(Child(
                "flower", [py, "-m", "celery", "-A", "tasks", "flower", "--address=127.0.0.1",
                           f"--port={self.ports['flower']}"],
                f"{self.flower_url}" + ("  (basic auth from FLOWER_BASIC_AUTH)"
                                        if os.environ.get("FLOWER_BASIC_AUTH") else ""),
                lambda: http_ok(f"{self.flower_url}/healthcheck"), log("flower.log")))

    def celery_app(self) -> Any:
        """A Celery app configured like the children (celeryconfig), for pings and task events."""
        if self._celery is None:
            from celery import Celery

            app = Celery("proxysync-up", set_as_current=False)
            app.config_from_object("celeryconfig")
            app.conf.broker_url = self.broker_url
            self._celery = app
        return self._celery

    def _worker_pong(self) -> bool:
        try:
            replies = self.celery_app().control.ping(destination=[self.node], timeout=0.5)
        except Exception:  # a broker hiccup just means "not yet"
            return False
        return any(self.node in reply for reply in replies or [])

    # -- running -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.out(f"proxysync up: run {self.run_id}, logs in {self.run_dir}/")
        self.resolve_redis()
        self.started_ms = int(time.time() * 1000) - 1  # feed entries (stream ids) after this are ours
        self.build()
        for child in self.children:
            self.out(f"  {child.name:<10} {child.where}")
        self.start_due()
        kp = os.environ.get("CELERY_BROKER_KEYPREFIX")
        keyprefix = f" CELERY_BROKER_KEYPREFIX={kp}" if kp else ""
        self.out(f"  status     LISTENER_URL={self.listener_url} CELERY_BROKER_URL={redact(self.broker_url)} "
                 f"CACHE_REDIS_URL={redact(self.cache_url)} CACHE_PREFIX={self.settings.cache_prefix} "
                 f"{C.QUEUE_PREFIX_ENV}={self.settings.proxysync_queue_prefix}{keyprefix} proxysync status")

    def start_due(self) -> None:
        """Start every child not started yet whose ``after`` is ready."""
        ready = {c.name for c in self.children if c.ready_at is not None}
        for child in self.children:
            if child.proc is None and not child.given_up and (child.after is None or child.after in ready):
                child.start(self.env)
                pid = child.proc.pid if child.proc else "?"
                self.out(f"started: {child.name:<10} pid {pid}" + (f" ({child.after} is ready)" if child.after
                                                                    else ""))

    def wait_ready(self, timeout: float) -> bool:
        """Probe every child until all are ready; print each as it comes up."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not self.stop.is_set():
            self.supervise()
            if self.failed:
                return False
            pending = [c for c in self.children if c.ready_at is None]
            for child in pending:
                if child.proc is not None and child.exited() is None and child.probe():
                    child.ready_at = time.monotonic()
                    self.out(f"ready: {child.name:<10} after {child.ready_at - t0:5.1f}s")
                    self.start_due()
            if all(c.ready_at is not None for c in self.children):
                self.out(f"ready: all {len(self.children)} processes up in {time.monotonic() - t0:.1f}s"
                         + (f"; Flower at {self.flower_url}" if self.with_flower else ""))
                return True
            if time.monotonic() > deadline:
                late = [c.name for c in self.children if c.ready_at is None]
                self.failed = f"not ready within {timeout:g}s: {', '.join(late)}"
                for c in self.children:
                    if c.ready_at is None:
                        self.out(f"NOT READY: {c.name} (log {c.log}):\n{c.tail()}")
                return False
            self.stop.wait(0.2)
        return False

    def probe_pending(self) -> None:
        """After a restart: say when the child is ready again."""
        for child in self.children:
            if child.ready_at is None and child.proc is not None and child.exited() is None and child.probe():
                child.ready_at = time.monotonic()
                self.out(f"ready again: {child.name} after {child.ready_at - child.started:.1f}s")

    def supervise(self) -> None:
        """Report (and restart, within limits) children that died; set ``failed`` when giving up."""
        for child in self.children:
            rc = child.exited()
            if rc is None or self.stop.is_set():
                continue
            now = time.monotonic()
            child.deaths.append(now)
            while child.deaths and now - child.deaths[0] > DEATH_WINDOW:
                child.deaths.popleft()
            self.out(f"DIED: {child.name} exited with code {rc} (log {child.log}):\n{child.tail()}")
            child.signal_group(signal.SIGKILL)  # whatever it left behind in its group
            if len(child.deaths) > MAX_DEATHS:
                self.failed = f"{child.name} died {len(child.deaths)} times within {DEATH_WINDOW:.0f}s"
                self.out(f"giving up: {self.failed}")
                child.proc, child.given_up = None, True
                continue
            self.out(f"restarting {child.name} ({len(child.deaths)}/{MAX_DEATHS})")
            child.start(self.env)

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every group, wait up to ``grace`` s, SIGKILL what is left; then the embedded Redis."""
        order = sorted(self.children, key=lambda c: STOP_ORDER.index(c.name))
        for child in order:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in order:
            if child.proc is None:
                continue
            while child.proc.poll() is None and time.monotonic() < deadline and not self.hurry.is_set():
                self.hurry.wait(0.05)
            if child.proc.poll() is None:
                self.out(f"stop: {child.name} still running: killing it")
            child.signal_group(signal.SIGKILL)  # stragglers in the group (e.g. prefork children)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2)
        if self.redis is not None:
            self.redis.cleanup()
        self.out("stopped: all processes")


def _install_signals(stop: threading.Event, hurry: threading.Event, received: list[str]) -> None:
    """First SIGINT/SIGTERM: stop gracefully. Second: stop now (no grace period). Nothing printed here:
    writing to stdout inside a signal handler can re-enter a write in progress."""
    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        (hurry if stop.is_set() else stop).set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@click.command(name="up")
@click.option("--demo", is_flag=True, help="Seed the cache, publish each event type, show each effect.")
@click.option("--once", is_flag=True, help="Exit after start-up (and the demo): 0 if all was shown working.")
@click.option("--ready-timeout", default=90.0, show_default=True, help="Seconds until all are ready.")
@click.option("--event-timeout", default=20.0, show_default=True, help="Seconds for each demo event to land.")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Run Flower too.")
@click.option("--concurrency", default=1, show_default=True, help="Worker processes of the one worker.")
def up(  # noqa: PLR0917 - click passes options positionally
    demo: bool, once: bool, ready_timeout: float, event_timeout: float, flower: bool, concurrency: int
) -> None:
    """Run the whole local stack (Redis, Messenger stand-in, listener, worker, Flower) until Ctrl-C.

    Ports: MESSENGER_PORT (8090), LISTENER_HTTP_PORT (8081), FLOWER_PORT (5555), WORKER_METRICS_PORT (9808);
    a port already in use is replaced by a free one.
    """
    def out(line: str) -> None:
        click.echo(line)

    stop, hurry = threading.Event(), threading.Event()
    received: list[str] = []
    _install_signals(stop, hurry, received)
    stack = Stack(StackSettings(), out=out, stop=stop, flower=flower, concurrency=concurrency)
    stack.hurry = hurry
    rc = 0
    try:
        stack.start()
        if not stack.wait_ready(ready_timeout):
            rc = 1 if stack.failed or once else 0
        elif demo:
            from proxysync.demo import run_demo

            ok = run_demo(stack, event_timeout=event_timeout, out=out)
            rc = 0 if ok or (stop.is_set() and not once) else 1
        if rc == 0 and not once and not stop.is_set():
            out("running: Ctrl-C to stop")
            while not stop.wait(0.5):
                stack.supervise()
                stack.probe_pending()
                if stack.failed:
                    rc = 1
                    break
    except (RuntimeError, OSError) as exc:
        out(f"proxysync up failed: {exc}")
        rc = 1
    finally:
        if received:
            out(f"{received[0]}: stopping every process (again to skip the grace period) ...")
        stack.close()
    if stack.failed:
        out(f"FAILED: {stack.failed}")
    if rc == 0:
        shutil.rmtree(stack.run_dir, ignore_errors=True)
    else:
        out(f"logs kept in {stack.run_dir}/")
    sys.exit(rc)
