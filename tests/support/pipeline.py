"""The whole pipeline, private to one test: broker Redis, Messenger stand-in, listener and worker processes.

:class:`Pipeline` starts a redis-server of its own as the Celery broker (so a test may stop, restart or proxy
it), the Messenger stand-in in-process (so a test may drop, stall or stop it), and ``python -m listener`` /
``celery -A tasks worker`` as real subprocesses with a unique topic, queue prefix and cache prefix. The cache
lives on the suite's Redis under the test's ``prefix``.

Accounting (:meth:`Pipeline.account`) reads the invalidation feed: an event is *applied* when a feed entry
carries its ``event_id``; a *duplicate* is a second feed entry for one id (an effect applied twice); an event
that never reached the listener because no session was subscribed (a topic does not replay) is *resynced*
when a gap-policy ``invalidate_all`` was applied after it was published; anything else is *lost*, except
what :func:`popped_and_dropped` proves lost in kombu's Redis BRPOP window, which is reported apart
(``brpop*``). ``amqp_url`` runs the same pipeline on RabbitMQ instead of the private Redis broker.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cache.feed import FeedEntry, read_feed
from cache.names import Op
from messenger.server import MessengerServer
from proxysync import constants as C
from proxysync.redis_server import RedisServer, free_port
from tests.listener.conftest import event, wait_for
from tests.support.processes import stop_group
from tests.tasks.conftest import TEST_POLICY, Broker, _clean_broker

BIN = Path(sys.executable).parent
TOKEN = "chaos-token-3f9a7c1e5b2d"
#: Env the children must not inherit from whoever runs the suite (their values are set explicitly).
_OWN_ENV = ("WEBSOCKET_CLIENT_", "IAM_", "LISTENER_", "CELERY_", "CACHE_", "WORKER_", "PROXYSYNC_", "LOG_")


def child_env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env | {k: str(v) for k, v in extra.items()}


@dataclass(eq=False)
class Proc:
    """A child process in its own process group, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0  # a listener's health/metrics port

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def children(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except OSError:
            return []

    def kill9(self) -> None:
        """SIGKILL the whole process group: the process and every child it forked."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        stop_group(self.popen, timeout)


@dataclass
class Counts:
    """One fault's accounting row."""

    fault: str
    sent: int
    applied: int
    duplicates: int
    resynced: int
    lost: int
    redelivered: int = 0
    window: int = 0  # lost in kombu's Redis BRPOP window (see popped_and_dropped), reported apart
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"{self.fault:<46} {self.sent:>6} {self.applied:>7} {self.duplicates:>5}"
                f" {self.redelivered:>6} {self.resynced:>8} {self.window:>7} {self.lost:>5}")

    HEADER = (f"{'fault':<46} {'sent':>6} {'applied':>7} {'dups':>5} {'redel':>6} {'resynced':>8}"
              f" {'brpop*':>7} {'lost':>5}")


#: Every row recorded in this session; tests/chaos/conftest.py prints them in the terminal summary.
RESULTS: list[Counts] = []


class Pipeline:
    """Start with :meth:`start`; add listeners and workers; :meth:`close` stops everything it started."""

    def __init__(self, tmp: Path, cache_url: str, cache_prefix: str, *, token: str | None = None,
                 heartbeat_ms: int = 1000, ssl_context: ssl.SSLContext | None = None,
                 amqp_url: str | None = None) -> None:
        self.tmp = tmp
        self.cache_url, self.cache_prefix = cache_url, cache_prefix
        self.cache = redis.Redis.from_url(cache_url)
        self.tag = uuid.uuid4().hex[:8]
        self.topic = f"chaos-{self.tag}"
        self.queue_prefix = f"chaos-{self.tag}"
        self.token = token
        self.heartbeat_ms = heartbeat_ms
        self.messenger_up = False
        self.broker = RedisServer()
        self.amqp_url = amqp_url  # RabbitMQ as the Celery broker instead of the private Redis
        self.messenger = MessengerServer(token=token, heartbeat_ms=heartbeat_ms, ssl_context=ssl_context)
        self.listeners: list[Proc] = []
        self.workers: list[Proc] = []
        self.sent: dict[str, float] = {}  # event_id -> time.time() of the publish
        self.delivered: set[str] = set()  # the stand-in handed it to at least one subscription
        self._sent_lock = threading.Lock()

    # --- lifecycle ---

    def start(self) -> Pipeline:
        self.broker.start()
        # Saved on SIGTERM, loaded again on start: a restart keeps the queues, as a production broker would.
        self.broker_client().config_set("save", "3600 1")
        self.messenger.start()
        self.messenger_up = True
        return self

    def close(self) -> None:
        for proc in self.listeners:
            proc.stop(10)
        for proc in self.workers:  # acks_late: a killed worker leaves nothing half-done that matters here
            proc.kill9()
        self.messenger.stop()
        self.broker.cleanup()
        if self.amqp_url:
            _clean_broker(Broker("amqp", self.amqp_url, self.queue_prefix, None))
        self.cache.close()

    @property
    def broker_url(self) -> str:
        return self.amqp_url or self.broker.url

    def broker_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker.url, socket_timeout=5)

    def restart_broker(self, down_s: float) -> None:
        """SIGTERM the broker Redis (it saves), wait ``down_s``, start it again on the same port."""
        self.broker.stop()
        time.sleep(down_s)
        self.broker.start()
        self.broker_client().config_set("save", "3600 1")

    # --- processes ---

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as fh:
            popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return Proc(name, popen, log)

    def start_listener(self, *, baseurl: str | None = None, broker_url: str | None = None,
                       log_level: str = "INFO", wait: bool = True, **env: Any) -> Proc:
        n = len(self.listeners)
        values: dict[str, Any] = {
            "WEBSOCKET_CLIENT_BASEURL": baseurl or self.messenger.url,
            "WEBSOCKET_CLIENT_TOPIC": self.topic,
            "WEBSOCKET_CLIENT_RETRY_INTERVAL": 200,
            "WEBSOCKET_CLIENT_RETRY_MAX": 2000,
            "WEBSOCKET_CLIENT_HEARTBEAT": 1000,
            "LISTENER_HTTP_PORT": free_port(),
            "LISTENER_SPOOL_PATH": self.tmp / f"spool-{n}.db",
            "CELERY_BROKER_URL": broker_url or self.broker_url,
            C.QUEUE_PREFIX_ENV: self.queue_prefix,
            # delivery confirmation: a task the broker lost is sent again 1 s after a later one started
            "CACHE_REDIS_URL": self.cache_url,
            "CACHE_PREFIX": self.cache_prefix,
            "LISTENER_CONFIRM_AFTER": 1,
        }
        if self.token and "WEBSOCKET_CLIENT_TOKEN_FILE" not in env:
            values["WEBSOCKET_CLIENT_TOKEN"] = self.token
        values |= env
        proc = self._spawn(f"listener-{n}", [sys.executable, "-m", "listener", "--log-level", log_level],
                           child_env(**values))
        proc.port = int(values["LISTENER_HTTP_PORT"])
        self.listeners.append(proc)
        if wait:
            self.wait_subscribed(proc)
        return proc

    def start_worker(self, *, broker_url: str | None = None, concurrency: int = 1, wait: bool = True) -> Proc:
        n = len(self.workers)
        env = child_env(**{
            "CELERY_BROKER_URL": broker_url or self.broker_url,
            "CELERY_BROKER_HEARTBEAT": "2",
            C.QUEUE_PREFIX_ENV: self.queue_prefix,
            "CACHE_REDIS_URL": self.cache_url,
            "CACHE_PREFIX": self.cache_prefix,
            "CELERY_SEND_EVENTS": "0",
            "CELERY_VISIBILITY_TIMEOUT": "8",  # a dead worker's reserved messages come back after 8 s
            "CELERY_BROKER_CONNECT_TIMEOUT": "2",
            "WORKER_DEAD_SPOOL": self.tmp / f"dead-{n}",
            "ROUTES_COALESCE_WINDOW": "0.2",
            **{k.upper(): v for k, v in TEST_POLICY.items() if k != "routes_coalesce_window"},
        })
        argv = [str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "prefork", "--concurrency",
                str(concurrency), "--without-mingle", "--without-gossip", "--without-heartbeat",
                "-n", f"{self.queue_prefix}-w{n}@%h", "-l", "INFO"]
        proc = self._spawn(f"worker-{n}", argv, env)
        self.workers.append(proc)
        if wait:
            wait_for(lambda: not proc.alive() or " ready." in proc.text(), 90, f"worker {n} ready")
            assert proc.alive(), proc.text()[-3000:]
        return proc

    # --- listener observability ---

    def metrics(self, proc: Proc) -> dict[str, float]:
        """The listener's /metrics as ``{"name{labels}": value}``; empty when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out

    def metric(self, proc: Proc, series: str) -> float:
        return self.metrics(proc).get(series, 0.0)

    def subscribed(self, proc: Proc) -> bool:
        return self.metric(proc, "proxysync_listener_connected") == 1.0

    def wait_subscribed(self, proc: Proc, timeout: float = 30.0) -> None:
        """The listener says SUBSCRIBED and the stand-in holds a subscription for every such listener (the
        listener sends SUBSCRIBE without a receipt: a publish right after could otherwise find nobody)."""
        wait_for(lambda: not proc.alive() or self.subscribed(proc), timeout, f"{proc.name} subscribed")
        assert proc.alive(), proc.text()[-3000:]
        dest = C.topic_destination(self.topic)

        def held() -> bool:
            subs = [s for s in self.messenger.stats()["subscriptions"] if s["destination"] == dest]
            return len(subs) >= sum(1 for p in self.listeners if p.alive() and self.subscribed(p))

        wait_for(held, timeout, "the stand-in to hold the subscription")

    # --- events ---

    def key(self, i: int, tenant: str | None = None) -> str:
        return f"{tenant or 't-' + self.tag}#app-1#/api/{i}#CONFIG#production"

    def publish_raw(self, body: bytes | str, headers: dict[str, str] | None = None) -> int:
        if not self.messenger_up:
            raise RuntimeError("the messenger stand-in is down")
        return self.messenger.publish(C.topic_destination(self.topic), body, headers)

    def publish_event(self, event_id: str, **payload: Any) -> int:
        """Publish one event and record it as sent (whether or not a session was subscribed)."""
        body = event(payload.pop("kind", "CACHE_DELETE_INVALID"), eventId=event_id, **payload)
        with self._sent_lock:
            self.sent[event_id] = time.time()
        try:
            delivered = self.publish_raw(body)
        except Exception:  # the stand-in is down (outage tests): the config manager's publish failed
            with self._sent_lock:
                del self.sent[event_id]
            return -1
        if delivered:
            self.delivered.add(event_id)
        return delivered

    def publish_delete(self, i: int, label: str = "e") -> int:
        return self.publish_event(f"{label}-{self.tag}-{i}", key=self.key(i))

    def stream(self, n: int, *, rate: float = 200.0, label: str = "e", start: int = 0) -> Stream:
        """Publish ``n`` delete events at about ``rate``/s on a background thread."""
        return Stream(self, n, rate, label, start).begin()

    # --- accounting ---

    def feed(self) -> list[FeedEntry]:
        return read_feed(self.cache, prefix=self.cache_prefix, count=1_000_000)

    def applied_ids(self) -> Counter[str]:
        return Counter(e.event_id for e in self.feed() if e.event_id)

    def gap_resyncs(self) -> list[FeedEntry]:
        return [e for e in self.feed() if e.op is Op.INVALIDATE_ALL and (e.event_id or "").startswith("gap-")]

    def wait_applied(self, timeout: float = 60.0, ids: set[str] | None = None, *,
                     resync_ok: bool = False) -> bool:
        """Wait until ``ids`` (default: every sent event) are applied; ``False`` on timeout.

        With ``resync_ok``, events covered by a gap resync need not be applied: then it is enough that
        nothing is lost and the broker holds nothing more (queues and ``unacked`` empty)."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while time.monotonic() < deadline:
            if ids is not None:
                if ids <= set(self.applied_ids()):
                    return True
            else:
                counts = self.account("probe", record=False)
                if counts.applied == counts.sent:
                    return True
                idle = self._broker_idle()
                if resync_ok and counts.lost == 0 and idle:
                    return True
                # nothing queued, nothing reserved for 10 s (longer than the listener's re-send of a lost
                # last task, 6 x LISTENER_CONFIRM_AFTER): what is missing now will not come
                idle_since = (idle_since or time.monotonic()) if idle else None
                if idle_since is not None and time.monotonic() - idle_since > 10.0:
                    return False
            time.sleep(0.25)
        return False

    def _broker_idle(self) -> bool:
        if self.amqp_url:
            return False  # not inspected: tests on RabbitMQ wait for every event
        try:
            client = self.broker_client()
            queues = (C.queue_name(q, self.queue_prefix) for q in (C.QUEUE_INVALIDATIONS, C.QUEUE_ROUTES))
            busy = client.hlen("unacked") + sum(client.llen(q) for q in queues)
        except redis.RedisError:
            return False
        return busy == 0

    def restart_messenger(self, down_s: float) -> MessengerServer:
        """Stop the stand-in (every session ends), wait ``down_s``, start a fresh one on the same port."""
        old = self.messenger
        self.messenger_up = False
        old.stop()
        time.sleep(down_s)
        self.messenger = MessengerServer(port=old.port, token=self.token, heartbeat_ms=self.heartbeat_ms)
        self.messenger.start()
        self.messenger_up = True
        return self.messenger

    def account(self, fault: str, *, record: bool = True, window: bool = False) -> Counts:
        """Count what happened to every sent event; with ``window``, losses proven to be kombu's BRPOP window
        (:func:`popped_and_dropped`) are moved from ``lost`` to ``window``."""
        applied = self.applied_ids()
        resync_times = [e.applied_at_ms / 1000 for e in self.gap_resyncs()]
        with self._sent_lock:
            sent = dict(self.sent)
        got = [i for i in sent if applied[i] >= 1]
        dups = sum(applied[i] - 1 for i in got)
        resynced = [i for i, t in sent.items() if applied[i] == 0 and any(r >= t for r in resync_times)]
        lost = [i for i in sent if applied[i] == 0 and i not in set(resynced)]
        redelivered = sum(p.text().count("(duplicate: already applied)") for p in self.workers)
        counts = Counts(fault, len(sent), len(got), dups, len(resynced), len(lost), redelivered,
                        missing=sorted(lost)[:50])
        if window and lost and popped_and_dropped(self, lost):
            counts.window, counts.lost = len(lost), 0
        if resynced:
            in_flight = sum(1 for i in resynced if i in self.delivered)
            counts.notes.append(f"resynced: {len(resynced) - in_flight} published while no session was "
                                f"subscribed, {in_flight} delivered to a session that then died")
        if record:
            RESULTS.append(counts)
        return counts

    def diagnose(self, missing: list[str] | None = None) -> str:
        """What to print when events are missing: their log lines, queue depths, process state, log tails."""
        lines = []
        for event_id in missing or []:
            for p in [*self.listeners, *self.workers]:
                lines += [f"{p.name}: {line}" for line in p.text().splitlines() if f"{event_id}]" in line
                          or f"{event_id} " in line or line.endswith(event_id)]
        try:
            client = self.broker_client()
            for suffix in (C.QUEUE_INVALIDATIONS, C.QUEUE_ROUTES):
                q = C.queue_name(suffix, self.queue_prefix)
                lines.append(f"broker queue {q}: {client.llen(q)} waiting, unacked {client.hlen('unacked')}")
        except redis.RedisError as exc:
            lines.append(f"broker: {exc}")
        for p in [*self.listeners, *self.workers]:
            lines.append(f"--- {p.name} pid {p.pid} alive={p.alive()}\n{p.text()[-600:]}")
        return "\n".join(lines)


class Stream:
    """A background publisher (the config manager), so faults can be injected while events flow."""

    def __init__(self, pipeline: Pipeline, n: int, rate: float, label: str, start: int) -> None:
        self.pipeline, self.n, self.rate, self.label, self.first = pipeline, n, rate, label, start
        self.published = 0
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-stream")

    def begin(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        for k in range(self.n):
            pause = t0 + k / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self.pipeline.publish_delete(self.first + k, self.label) > 0:
                self.delivered += 1
            self.published += 1

    def wait_published(self, count: int, timeout: float = 60.0) -> None:
        wait_for(lambda: self.published >= count, timeout, f"{count} events published")

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the publisher did not finish"


def log_times(text: str, pattern: str) -> list[tuple[float, re.Match[str]]]:
    """``(epoch seconds, match)`` for every log line (listener text format) matching ``pattern``."""
    out = []
    rx = re.compile(pattern)
    for line in text.splitlines():
        m = rx.search(line)
        if m is None:
            continue
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
        except ValueError:
            continue
        out.append((stamp, m))
    return out


def popped_and_dropped(p: Pipeline, ids: list[str]) -> bool:
    """True when every id in ``ids`` was taken off the broker by a worker that never recorded it.

    kombu's Redis transport BRPOPs a message (removing it from the list) and only then writes it to the
    ``unacked`` hash from the client; a worker killed, or a broker that dies, between the two loses that one
    message (celery/kombu#305, #1733). Such an event is in no queue, not in ``unacked`` and no worker
    logged it as received. Anything else missing is a loss of ours.
    """
    if p.amqp_url:
        return False  # RabbitMQ keeps a delivered message until it is acknowledged: no such window
    client = p.broker_client()
    parts: list[bytes] = list(client.hvals("unacked"))  # type: ignore[arg-type]
    for q in (C.QUEUE_INVALIDATIONS, C.QUEUE_ROUTES):
        parts += client.lrange(C.queue_name(q, p.queue_prefix), 0, -1)  # type: ignore[arg-type]
    held = b"".join(parts)
    logs = "".join(w.text() for w in p.workers)
    return bool(ids) and all(i.encode() not in held and f"[{i}] received" not in logs for i in ids)


def assert_nothing_lost(p: Pipeline, counts: Counts, *, resync_allowed: bool = False) -> None:
    assert counts.lost == 0, f"{counts}\n{p.diagnose(counts.missing)}"
    assert counts.duplicates == 0, counts
    if not resync_allowed:
        # the listener's delivery confirmation re-sends what kombu's BRPOP window loses: every event applies
        complete = counts.resynced == 0 and counts.applied == counts.sent
        assert complete, f"{counts}\n{p.diagnose(counts.missing)}"
