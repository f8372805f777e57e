"""Worker metrics Flower does not have, correct under the prefork pool.

Names are declared once, here. The metric objects are created lazily in the process that records (a prefork
child, or the worker itself with the solo/threads pool). With ``WORKER_METRICS_PORT`` set, the worker's main
process serves ``/metrics`` from ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client multiprocess mode: every
child writes its own files there, the collector sums them); the directory is created when unset and emptied at
start-up, as the prometheus-client docs require.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

NS = "proxysync_worker"
INVALIDATIONS = f"{NS}_invalidations_applied"  # counter {op}: changes applied (feed entries written)
REMOVED = f"{NS}_entries_removed"  # counter {op}: cache entries removed
DUPLICATES = f"{NS}_duplicates_skipped"  # counter {op}: events already applied, skipped
RETRIES = f"{NS}_task_retries"  # counter {task}: retries scheduled after a transient error
DEAD_LETTERS = f"{NS}_dead_letters"  # counter {task, reason}: dead letters recorded
COALESCED = f"{NS}_route_refresh_coalesced"  # counter: refresh requests folded into a trailing refresh
LATENCY = f"{NS}_propagation_latency_seconds"  # histogram {op}: event_time -> applied
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Metrics:
    invalidations: Any
    removed: Any
    duplicates: Any
    retries: Any
    dead_letters: Any
    coalesced: Any
    latency: Any


_lock = threading.Lock()
_metrics: dict[int, Metrics] = {}
_registered = False


def metrics() -> Metrics:
    """This process's metric objects (created on first use, after any fork)."""
    pid = os.getpid()
    found = _metrics.get(pid)
    if found is not None:
        return found
    with _lock:
        if pid not in _metrics:
            from prometheus_client import REGISTRY, Counter, Histogram

            # Multiprocess mode: values go to files the main process's collector reads; registering is moot.
            # Otherwise register in the default registry once per interpreter (a forked child inherits it).
            global _registered  # noqa: PLW0603
            reg = None if os.environ.get(MULTIPROC_ENV) or _registered else REGISTRY
            _registered = True
            _metrics.clear()  # a forked child starts afresh; the parent's objects stay with the parent
            _metrics[pid] = Metrics(
                invalidations=Counter(INVALIDATIONS, "Invalidations applied, by op", ["op"], registry=reg),
                removed=Counter(REMOVED, "Cache entries removed, by op", ["op"], registry=reg),
                duplicates=Counter(DUPLICATES, "Events skipped as already applied", ["op"], registry=reg),
                retries=Counter(RETRIES, "Task retries after a transient error", ["task"], registry=reg),
                dead_letters=Counter(DEAD_LETTERS, "Dead letters recorded", ["task", "reason"], registry=reg),
                coalesced=Counter(COALESCED, "Refresh requests folded into a trailing one", registry=reg),
                latency=Histogram(LATENCY, "Seconds from event_time to applied", ["op"],
                                  buckets=LATENCY_BUCKETS, registry=reg),
            )
        return _metrics[pid]


class MetricsServer:
    """The ``/metrics`` endpoint of the worker's main process (multiprocess collector)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: Any = None
        self._owned_dir: str | None = None

    def start(self) -> None:
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            path = self._owned_dir = tempfile.mkdtemp(prefix="proxysync-metrics-")
            os.environ[MULTIPROC_ENV] = path  # inherited by the pool's children, read by prometheus-client
        else:
            os.makedirs(path, exist_ok=True)
            for name in os.listdir(path):  # stale files of a previous run would be summed in
                if name.endswith(".db"):
                    os.unlink(os.path.join(path, name))
        from prometheus_client import CollectorRegistry, start_http_server, values
        from prometheus_client.multiprocess import MultiProcessCollector

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # in case prometheus-client was imported before the env
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        self._server, _thread = start_http_server(self.port, registry=registry)
        log.info("worker metrics on :%d/metrics (multiprocess dir %s)", self.port, path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._owned_dir:
            shutil.rmtree(self._owned_dir, ignore_errors=True)


def child_exited(pid: int) -> None:
    """Tell the multiprocess collector a pool child is gone (live gauges only; harmless otherwise)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
