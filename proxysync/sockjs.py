"""SockJS framing (SockJS protocol 0.3), as pure functions over ``str`` — no sockets.

Server -> client frames on a WebSocket session::

    o                 open
    h                 heartbeat
    a["m1","m2"]      array of messages (each a JSON string)
    c[3000,"Go away!"]  close, with code and reason

Client -> server: a JSON array of strings (``["m1"]``) or a single JSON string.
The info document answers ``GET {base}/info``; the session lives at ``{base}/{server}/{session}/websocket``.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Literal

FrameKind = Literal["open", "heartbeat", "messages", "close"]
_SESSION_ALPHABET = string.ascii_lowercase + string.digits


class SockJSError(ValueError):
    """A frame that is not valid SockJS framing."""


@dataclass(frozen=True, slots=True)
class SockJSFrame:
    kind: FrameKind
    messages: tuple[str, ...] = ()
    code: int | None = None
    reason: str | None = None


OPEN = SockJSFrame("open")
HEARTBEAT = SockJSFrame("heartbeat")


def _dumps(value: object) -> str:
    # SockJS clients expect plain JSON; keep non-ASCII as is (the WebSocket text frame is UTF-8 anyway).
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_open() -> str:
    return "o"


def encode_heartbeat() -> str:
    return "h"


def encode_messages(messages: list[str] | tuple[str, ...]) -> str:
    return "a" + _dumps(list(messages))


def encode_close(code: int, reason: str) -> str:
    return "c" + _dumps([code, reason])


def decode_server_frame(text: str) -> SockJSFrame:
    """Parse one server->client frame; raise :class:`SockJSError` for anything else."""
    if not isinstance(text, str) or not text:
        raise SockJSError("empty SockJS frame")
    kind, rest = text[0], text[1:]
    if kind == "o" and not rest:
        return OPEN
    if kind == "h" and not rest:
        return HEARTBEAT
    if kind in "ac" and rest:
        try:
            body = json.loads(rest)
        except (ValueError, RecursionError) as exc:
            raise SockJSError(f"SockJS '{kind}' frame is not JSON: {str(exc)[:80]}") from None
        if kind == "a":
            if not isinstance(body, list) or not all(isinstance(m, str) for m in body):
                raise SockJSError("SockJS 'a' frame is not an array of strings")
            return SockJSFrame("messages", messages=tuple(body))
        if (isinstance(body, list) and len(body) == 2 and isinstance(body[0], int)
                and not isinstance(body[0], bool) and isinstance(body[1], str)):
            return SockJSFrame("close", code=body[0], reason=body[1])
        raise SockJSError("SockJS 'c' frame is not [code, reason]")
    raise SockJSError(f"unknown SockJS frame type {text[:1]!r}")


def encode_client_messages(messages: list[str] | tuple[str, ...]) -> str:
    return _dumps(list(messages))


def decode_client_messages(text: str) -> tuple[str, ...]:
    """Parse what a client sent: a JSON array of strings, or one JSON string."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SockJSError(f"SockJS client message is not JSON: {str(exc)[:80]}") from None
    if isinstance(body, str):
        return (body,)
    if isinstance(body, list) and all(isinstance(m, str) for m in body):
        return tuple(body)
    raise SockJSError("SockJS client message is not a string or an array of strings")


def session_path(base: str, *, server_id: str | None = None, session_id: str | None = None) -> str:
    """``{base}/{000-999}/{random}/websocket`` for a SockJS-framed WebSocket session."""
    server = server_id if server_id is not None else f"{secrets.randbelow(1000):03d}"
    session = session_id if session_id is not None else "".join(
        secrets.choice(_SESSION_ALPHABET) for _ in range(16))
    return f"{base.rstrip('/')}/{server}/{session}/websocket"


def info_document(*, websocket: bool = True) -> dict[str, object]:
    """What ``GET {base}/info`` answers (as Spring's SockJS service does)."""
    return {"entropy": secrets.randbelow(2**31), "origins": ["*:*"], "cookie_needed": False,
            "websocket": websocket}
