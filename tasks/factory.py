"""Building the Celery app: configuration from ``celeryconfig``, tasks registered by name, worker hooks.

``tasks.app`` is ``create_app()`` (settings from the environment). Tests and tools build their own app with
other settings, broker or queue prefix; nothing here holds a client at module level.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import task_rejected, task_unknown, worker_init, worker_process_shutdown, worker_shutdown

import celeryconfig
from tasks import deadletter, kombu_guard
from tasks.base import ProxysyncTask, policy
from tasks.invalidations import TASKS
from tasks.metrics import MetricsServer, child_exited, metrics
from tasks.runtime import Runtime
from tasks.settings import WorkerSettings

log = logging.getLogger(__name__)


def create_app(settings: WorkerSettings | None = None, *, queue_prefix: str | None = None,
               **conf: Any) -> Celery:
    """A Celery app with every proxysync task registered on one policy-carrying base class."""
    settings = settings or WorkerSettings()
    kombu_guard.install()
    app = Celery("proxysync", set_as_current=False)
    app.config_from_object(celeryconfig)
    if queue_prefix is not None:
        app.conf.update(celeryconfig.routing(queue_prefix))
    if "broker_url" in conf and "broker_transport_options" not in conf:
        conf["broker_transport_options"] = celeryconfig.transport_options(conf["broker_url"])
    app.conf.update(conf)
    app.proxysync_runtime = Runtime(settings)
    app.proxysync_metrics = None
    base = type("ProxysyncTask", (ProxysyncTask,), {"abstract": True, **policy(settings)})
    app.proxysync_base = base
    for name, fun in TASKS.items():
        app.task(name=name, base=base, bind=True, shared=False)(fun)  # shared: every app ever finalized
    return app


def sender_app() -> Celery:
    """An app that only sends tasks by name (no worker code): for ``proxysync dead replay`` and similar."""
    app = Celery("proxysync-sender", set_as_current=False)
    app.config_from_object(celeryconfig)
    return app


def _ours(sender: Any) -> Runtime | None:
    app = getattr(sender, "app", None)
    rt = getattr(app, "proxysync_runtime", None)
    return rt if isinstance(rt, Runtime) else None


def _start_metrics(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool forks: serve /metrics when WORKER_METRICS_PORT is set."""
    rt = _ours(sender)
    if rt is None or not rt.settings.worker_metrics_port:
        return
    server = MetricsServer(rt.settings.worker_metrics_port)
    server.start()
    sender.app.proxysync_metrics = server


def _stop_metrics(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    server = getattr(app, "proxysync_metrics", None)
    if app is not None and isinstance(server, MetricsServer):
        server.stop()
        app.proxysync_metrics = None


def _child_exit(pid: int | None = None, **_: Any) -> None:
    child_exited(pid or os.getpid())


def _refused(sender: Any, message: Any, exc: BaseException | None, reason: str) -> None:
    """Dead-letter a message the worker discards undecoded (content type refused, malformed, unknown task)."""
    rt = _ours(sender)
    if rt is None:
        return
    headers = getattr(message, "headers", None) or {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if reason == "unknown":  # decodable JSON, just not a task this worker has: keep the arguments (replay)
        try:
            body_args, body_kwargs, _embed = message.decode()
            args, kwargs = list(body_args), dict(body_kwargs)
        except Exception:  # noqa: S110 - proto1 or malformed: record without arguments
            pass
    letter = deadletter.DeadLetter(
        task=str(headers.get("task") or "?"), task_id=str(headers.get("id") or "?"), kwargs=kwargs, args=args,
        reason=reason,
        error=f"{type(exc).__name__}: {exc} (content type {getattr(message, 'content_type', '?')})"[:2000],
        attempts=1, queue=str((getattr(message, "delivery_info", None) or {}).get("routing_key") or ""),
        hostname=str(getattr(sender, "hostname", "") or ""),
    )
    deadletter.record(rt.redis, rt.prefix, rt.settings.dead_spool(), letter)
    metrics().dead_letters.labels(task=letter.task, reason=reason).inc()


def _on_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    _refused(sender, message, exc or ValueError("not a Celery task message"), "refused")


def _on_unknown(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    _refused(sender, message, exc, "unknown")


# Global signals, connected once at import; each handler acts only for apps built by create_app.
worker_init.connect(_start_metrics, weak=False)
worker_shutdown.connect(_stop_metrics, weak=False)
worker_process_shutdown.connect(_child_exit, weak=False)
task_rejected.connect(_on_rejected, weak=False)
task_unknown.connect(_on_unknown, weak=False)
