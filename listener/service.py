"""Wiring: settings -> token source, spool, sender, dispatcher, supervisor, HTTP health/metrics; signals;
logs.

``Listener(settings).start()`` runs everything on background threads (tests use it in-process);
:func:`run` is the process entry point (``python -m listener`` / ``proxysync listen``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from listener.auth import token_source
from listener.confirm import Confirmations
from listener.dispatch import Dispatcher
from listener.metrics import Metrics
from listener.sender import make_sender
from listener.settings import ListenerSettings
from listener.spool import Spool
from listener.states import State
from listener.supervisor import Supervisor

log = logging.getLogger("listener")


class Listener:
    """The whole listener process, startable and stoppable in-process."""

    def __init__(
        self,
        settings: ListenerSettings,
        *,
        spool_max: int = 100_000,
        stable_s: float = 30.0,
        broker_retry_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.tokens = token_source(settings)
        self.spool = Spool(settings.spool_path, max_items=spool_max)
        self.sender = make_sender(settings.broker_url)
        self.confirm_redis = _confirm_redis(settings)
        confirm = None
        if self.confirm_redis is not None:
            confirm = Confirmations(
                self.confirm_redis,
                prefix=settings.cache_prefix,
                grace=settings.confirm_after_s,
                queue_depth=getattr(self.sender, "queue_depth", None),
            )
        self.dispatcher = Dispatcher(
            self.sender, self.spool, self.metrics, broker_retry_s=broker_retry_s, confirm=confirm
        )
        self.supervisor = Supervisor(settings, self.tokens, self.dispatcher, self.metrics, stable_s=stable_s)
        self.http: ThreadingHTTPServer | None = None
        self.started_at = time.time()

    @property
    def http_port(self) -> int:
        return self.http.server_address[1] if self.http is not None else 0

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Connected + subscribed + broker reachable."""
        state = self.supervisor.state
        detail = {
            "state": state.value,
            "subscribed": state is State.SUBSCRIBED,
            "broker": self.dispatcher.broker_ok,
            "spool_depth": self.spool.depth,
        }
        return bool(detail["subscribed"] and detail["broker"]), detail

    def start(self) -> Listener:
        if self.spool.depth:
            log.info(
                "[WS-Client] %d task(s) left in the spool %s: replaying them first",
                self.spool.depth,
                self.spool.path,
            )
        self.dispatcher.start()
        self.http = _serve_http(self, self.settings.http_port)
        self.supervisor.start()
        log.info(
            "[WS-Client] listener started: %s topic %s, transport %s, health on :%d",
            self.settings.url,
            self.settings.destination,
            self.settings.transport,
            self.http_port,
        )
        return self

    def stop(self, timeout_s: float = 9.0) -> bool:
        """Unsubscribe, DISCONNECT with receipt, drain the dispatcher; ``True`` when all finished in time."""
        deadline = time.monotonic() + timeout_s
        self.supervisor.stop(max(1.0, deadline - time.monotonic() - 2.0))
        drained = self.dispatcher.stop(max(0.5, deadline - time.monotonic() - 0.5))
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if drained:
            self.spool.close()
        self.sender.close()
        if self.confirm_redis is not None:
            self.confirm_redis.close()
        log.info("[WS-Client] listener stopped (%s)", "drained" if drained else "drain timed out")
        return drained


def _confirm_redis(settings: ListenerSettings) -> redis.Redis | None:
    """The cache Redis client for delivery confirmation (short timeouts: it must never stall dispatch)."""
    if settings.confirm_after_s <= 0:
        log.info("[WS-Client] delivery confirmation off (LISTENER_CONFIRM_AFTER=0)")
        return None
    return redis.Redis.from_url(
        settings.cache_url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
    )


def _serve_http(listener: Listener, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = listener.supervisor.alive and listener.dispatcher.alive
                body = json.dumps({"status": "ok" if alive else "dead threads"}) + "\n"
                self._send(200 if alive else 503, body.encode(), "application/json")
            elif path == "/readyz":
                ok, detail = listener.ready()
                self._send(200 if ok else 503, (json.dumps(detail) + "\n").encode(), "application/json")
            elif path == "/metrics":
                self._send(200, generate_latest(listener.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the event lines

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="listener-http", daemon=True).start()
    return server


def run(settings: ListenerSettings) -> int:
    """Run until SIGTERM/SIGINT; exit code 0 on a clean stop."""
    listener = Listener(settings).start()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info(
            "[WS-Client] %s received: unsubscribing, disconnecting, draining", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop.wait(1.0):
        pass
    return 0 if listener.stop() else 1
