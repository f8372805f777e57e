"""The listener's Prometheus metrics: names declared once, one registry per listener (tests run several)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONNECTED: Final = "proxysync_listener_connected"
RECONNECTS: Final = "proxysync_listener_reconnects"
FRAMES_RECEIVED: Final = "proxysync_listener_frames_received"
FRAMES_DISPATCHED: Final = "proxysync_listener_frames_dispatched"
FRAMES_REJECTED: Final = "proxysync_listener_frames_rejected"
SPOOLED: Final = "proxysync_listener_spooled"
SPOOL_DEPTH: Final = "proxysync_listener_spool_depth"
GAP_RESYNCS: Final = "proxysync_listener_gap_resyncs"
AUTH_FAILURES: Final = "proxysync_listener_auth_failures"
DISPATCH_LATENCY: Final = "proxysync_listener_dispatch_latency_seconds"
RESENT: Final = "proxysync_listener_resent"
UNCONFIRMED: Final = "proxysync_listener_unconfirmed"
AWAITING: Final = "proxysync_listener_awaiting_confirmation"


class Metrics:
    """Counters/gauges for one listener. ``frames_rejected`` is labelled by reason (``oversize``,
    ``not_json``...)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected = Gauge(CONNECTED, "1 while a STOMP session is subscribed to the topic", registry=r)
        self.reconnects = Counter(RECONNECTS, "Sessions re-established after a drop or failure", registry=r)
        self.frames_received = Counter(FRAMES_RECEIVED, "MESSAGE frames received", registry=r)
        self.frames_dispatched = Counter(
            FRAMES_DISPATCHED, "Tasks handed to the broker", ["task"], registry=r
        )
        self.frames_rejected = Counter(FRAMES_REJECTED, "Frames refused, by reason", ["reason"], registry=r)
        self.spooled = Counter(SPOOLED, "Tasks written to the disk spool (broker unavailable)", registry=r)
        self.spool_depth = Gauge(SPOOL_DEPTH, "Tasks waiting in the disk spool", registry=r)
        self.gap_resyncs = Counter(
            GAP_RESYNCS, "Gap-policy resyncs sent after a (re)subscription", registry=r
        )
        self.auth_failures = Counter(AUTH_FAILURES, "Connections refused for credentials", registry=r)
        self.dispatch_latency = Histogram(
            DISPATCH_LATENCY,
            "Frame received -> task in the broker",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

        self.resent = Counter(
            RESENT, "Tasks sent again because no worker ever started them (lost by the broker)", registry=r
        )
        self.unconfirmed = Counter(
            UNCONFIRMED, "Tasks given up after repeated sends that no worker started", registry=r
        )
        self.awaiting = Gauge(AWAITING, "Tasks sent and not yet seen started by a worker", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and ``proxysync status``."""
        suffix = "" if name in (CONNECTED, SPOOL_DEPTH, AWAITING) else "_total"
        got = self.registry.get_sample_value(name + suffix, labels or None)
        return float(got or 0.0)
