"""A guard around one kombu Redis-transport bug that kills workers after a lost broker connection.

When the broker connection drops, Celery closes the consumer's connection
(``ignore_errors(connection.close)``); closing the Redis channel restores its unacknowledged messages
(``QoS.restore_unacked_once``), but by then kombu has already released the connection, so building a client
for the restore fails with ``AttributeError: 'NoneType' object has no attribute 'hostname'``
(celery/kombu#970, #582). That is no connection error, so it escapes ``ignore_errors`` and the worker exits
("Unrecoverable error") instead of reconnecting: seen in tests/chaos/test_broker.py when the broker Redis
restarts with messages in flight.

Nothing needs that restore to succeed: the messages stay in the broker's ``unacked`` hash and the transport's
visibility-timeout sweep puts them back (the listener's delivery confirmation re-sends what never started).
So the guard skips the restore with one log line, and the worker reconnects. Installed once per process by
``tasks.factory.create_app``; a no-op once kombu fixes the bug (nothing raised then).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def install() -> None:
    from kombu.transport import redis as kombu_redis

    qos: Any = kombu_redis.QoS
    original = qos.restore_unacked_once
    if getattr(original, "proxysync_guarded", False):
        return

    def restore_unacked_once(self: Any, stderr: Any = None) -> Any:
        try:
            return original(self, stderr)
        except AttributeError as exc:  # the released-connection bug only: anything else propagates
            if "hostname" not in str(exc) and "NoneType" not in str(exc):
                raise
            log.warning(
                "broker connection already released: %d unacknowledged message(s) stay in the broker's "
                "unacked set and come back after the visibility timeout (%s)", len(self._delivered), exc,
            )
            return None

    restore_unacked_once.proxysync_guarded = True  # type: ignore[attr-defined]
    qos.restore_unacked_once = restore_unacked_once
