"""Building the Celery app: configuration from ``celeryconfig``, tasks registered by name, worker hooks.

``tasks.app`` is ``create_app()`` (settings from the environment). Tests and tools build their own app with other
settings, broker or queue prefix; nothing here holds a client at module level.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

import celeryconfig
from tasks.base import ProxysyncTask, policy
from tasks.invalidations import TASKS
from tasks.metrics import MetricsServer, child_exited
from tasks.runtime import Runtime
from tasks.settings import WorkerSettings

log = logging.getLogger(__name__)


def create_app(settings: WorkerSettings | None = None, *, queue_prefix: str | None = None,
               **conf: Any) -> Celery:
    """A Celery app with every proxysync task registered on one policy-carrying base class."""
    settings = settings or WorkerSettings()
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
        app.task(name=name, base=base, bind=True)(fun)
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


@worker_init.connect(weak=False)
def _start_metrics(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool forks: serve /metrics when WORKER_METRICS_PORT is set."""
    rt = _ours(sender)
    if rt is None or not rt.settings.worker_metrics_port:
        return
    server = MetricsServer(rt.settings.worker_metrics_port)
    server.start()
    sender.app.proxysync_metrics = server


@worker_shutdown.connect(weak=False)
def _stop_metrics(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    server = getattr(app, "proxysync_metrics", None)
    if isinstance(server, MetricsServer):
        server.stop()
        app.proxysync_metrics = None


@worker_process_shutdown.connect(weak=False)
def _child_exit(pid: int | None = None, **_: Any) -> None:
    child_exited(pid or os.getpid())
