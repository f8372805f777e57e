"""Errors the listener raises, so one place (the supervisor) maps each to an outcome.

::

    ListenerError
     ├── ConfigError          bad settings: the process says why and exits non-zero ├── AuthError
     no token could be obtained, or the Messenger refused it: new token, backoff, retry ├── ConnectError
     the Messenger could not be reached / upgraded / STOMP-connected: backoff, retry │    └── AuthError is
     *not* a ConnectError: it also drops the cached token first └── BrokerUnavailable    the Celery broker did
     not take a task in time: the event goes to the spool
          (transient by definition; the dispatcher retries from the spool)

Bad frames are not exceptions of ours: :class:`proxysync.events.EventError` carries the reason label.
"""

from __future__ import annotations


class ListenerError(Exception):
    """Base of every error the listener raises."""


class ConfigError(ListenerError):
    """The settings are unusable (unknown transport, unreadable token file, ...)."""


class AuthError(ListenerError):
    """No usable bearer token: the token endpoint failed, or the Messenger refused the token."""


class ConnectError(ListenerError):
    """The Messenger did not accept a WebSocket/STOMP session this time."""


class BrokerUnavailable(ListenerError):
    """The Celery broker did not accept a task within the publish retry budget."""


class InvalidTransition(ListenerError):
    """A connection event that the state table does not allow in the current state: a bug, never input."""
