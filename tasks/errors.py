"""Errors of the tasks package, and which failures a task retries.

::

    TaskError
     └── BadArgumentsError   (also ValueError)  permanent: the message's arguments can never be applied

Outcomes are decided in one place, :class:`tasks.base.ProxysyncTask`:

* ``cache.CacheUnavailableError`` (transient) -> retried with exponential backoff and jitter, up to
  ``TASK_MAX_RETRIES``; then dead-lettered with reason ``exhausted``.
* anything else (``BadArgumentsError``, ``cache.InvalidKeyError``, ``cache.CachePermanentError``, a bug) ->
  dead-lettered at once with reason ``permanent``; retrying would fail the same way.
* a message redelivered more than ``TASK_MAX_DELIVERIES`` times without ever finishing (it keeps killing its
  worker process) -> dead-lettered with reason ``poison`` and not run again.
"""

from __future__ import annotations

from cache.errors import CacheUnavailableError

TRANSIENT: tuple[type[Exception], ...] = (CacheUnavailableError,)


class TaskError(Exception):
    """Base of the errors this package raises."""


class BadArgumentsError(TaskError, ValueError):
    """A task was sent arguments it cannot apply (missing, wrong type)."""
