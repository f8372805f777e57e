"""Errors of the Messenger stand-in.

::

    MessengerError
     └── StompProtocolError      a client sent something that is not STOMP 1.2: ERROR, then close
          └── FrameTooLargeError  a frame (or its headers) exceeds the configured limit

Bad credentials are not an exception: the broker answers them with an ERROR frame like any other outcome.
"""

from __future__ import annotations


class MessengerError(Exception):
    """Base of every error the stand-in raises on purpose."""


class StompProtocolError(MessengerError):
    """Bytes from a client that do not form a valid STOMP 1.2 frame; the message goes into the ERROR frame."""


class FrameTooLargeError(StompProtocolError):
    """A frame larger than the server's limit (refused before it is buffered whole)."""
