"""Connection states as data (h11's style): what each event does in each state, and the reconnect backoff.

Only the supervisor drives a :class:`ConnectionMachine`; everything else reads ``state``. An event the table
does not list for the current state is a bug and raises :class:`~listener.errors.InvalidTransition`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from enum import StrEnum

from listener.errors import InvalidTransition


class State(StrEnum):
    IDLE = "IDLE"
    CONNECTING = "CONNECTING"  # WebSocket upgrade + STOMP CONNECT in flight
    CONNECTED = "CONNECTED"  # STOMP session up, SUBSCRIBE not yet sent
    SUBSCRIBED = "SUBSCRIBED"  # receiving events
    BACKOFF = "BACKOFF"  # waiting before the next attempt
    STOPPING = "STOPPING"  # UNSUBSCRIBE + DISCONNECT(receipt) in flight
    STOPPED = "STOPPED"  # terminal


class Event(StrEnum):
    START = "START"
    CONNECTED = "CONNECTED"  # CONNECTED frame received
    SUBSCRIBED = "SUBSCRIBED"  # SUBSCRIBE sent on the live session
    FAILED = "FAILED"  # connect attempt failed (network, HTTP status, STOMP ERROR)
    AUTH_FAILED = "AUTH_FAILED"  # the Messenger refused the token
    DROPPED = "DROPPED"  # live session lost (socket closed, heart-beat/read-idle timeout, ERROR)
    RETRY = "RETRY"  # backoff elapsed
    STOP = "STOP"  # shutdown requested
    CLOSED = "CLOSED"  # clean shutdown finished


S, E = State, Event
TRANSITIONS: dict[State, dict[Event, State]] = {
    S.IDLE: {E.START: S.CONNECTING, E.STOP: S.STOPPED},
    S.CONNECTING: {
        E.CONNECTED: S.CONNECTED,
        E.FAILED: S.BACKOFF,
        E.AUTH_FAILED: S.BACKOFF,
        E.STOP: S.STOPPED,
    },
    S.CONNECTED: {
        E.SUBSCRIBED: S.SUBSCRIBED,
        E.DROPPED: S.BACKOFF,
        E.FAILED: S.BACKOFF,
        E.AUTH_FAILED: S.BACKOFF,
        E.STOP: S.STOPPING,
    },
    S.SUBSCRIBED: {E.DROPPED: S.BACKOFF, E.AUTH_FAILED: S.BACKOFF, E.STOP: S.STOPPING},
    S.BACKOFF: {E.RETRY: S.CONNECTING, E.STOP: S.STOPPED},
    S.STOPPING: {E.CLOSED: S.STOPPED, E.DROPPED: S.STOPPED},
    S.STOPPED: {},
}
LIVE: frozenset[State] = frozenset({S.CONNECTED, S.SUBSCRIBED})


class ConnectionMachine:
    """The current state and the transition function; ``on_change(old, event, new)`` is told every move."""

    def __init__(self, on_change: Callable[[State, Event, State], None] | None = None) -> None:
        self._state = State.IDLE
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def state(self) -> State:
        return self._state

    def handle(self, event: Event) -> State:
        with self._lock:
            old = self._state
            new = TRANSITIONS[old].get(event)
            if new is None:
                raise InvalidTransition(f"event {event.value} is not allowed in state {old.value}")
            self._state = new
        if self._on_change is not None:
            self._on_change(old, event, new)
        return new


class Backoff:
    """Exponential backoff with full jitter (delay = uniform(0, min(cap, initial * 2**n))).

    ``session_ended()`` resets the exponent once a session has stayed up ``stable_s`` seconds,
    so one flap after a day of calm starts again at the initial interval.
    """

    def __init__(
        self, initial_s: float, cap_s: float, *, stable_s: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.initial_s = initial_s
        self.cap_s = max(cap_s, initial_s)
        self.stable_s = stable_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        return min(self.cap_s, self.initial_s * (2.0 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def session_ended(self, lasted_s: float) -> None:
        """A session that lasted long enough proves the peer healthy again: start from the initial delay."""
        if lasted_s >= self.stable_s:
            self.attempt = 0
