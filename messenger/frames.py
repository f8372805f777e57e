"""STOMP 1.2 frames as pure functions over bytes — no sockets.

Serialisation goes through stomp.py's ``stomp.utils.convert_frame`` (the code its clients use); we add what
it leaves to the caller: header escaping (STOMP 1.2 "Value Encoding": ``\\r \\n \\c \\\\``, not applied to
CONNECT/CONNECTED) and an exact ``content-length``. Parsing is incremental (:class:`FrameParser`), because a
WebSocket message may carry a part of a frame, several frames, or heart-beat EOLs, and strict: stomp.py's
``parse_headers`` tolerates undefined escapes and header lines without a colon, which the spec calls fatal,
so the preamble is checked here, with stomp.py's own line/preamble regexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stomp import utils as stomp_utils

from messenger.errors import FrameTooLargeError, StompProtocolError

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
# STOMP 1.2, "Value Encoding": CONNECT and CONNECTED frames do not escape header values (1.0 compatibility).
_RAW_HEADER_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})
_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {"\\\\": "\\", "\\r": "\r", "\\n": "\n", "\\c": ":"}
_ESCAPE_RE = re.compile(r"\\.?", re.DOTALL)
_EOL_PREFIX = re.compile(rb"(?:\r?\n)+")

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_PREAMBLE = 64 * 1024


@dataclass(frozen=True, slots=True)
class StompFrame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def escape(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value) if any(c in value for c in _ESCAPES) else value


def unescape(value: str) -> str:
    """Undo STOMP 1.2 escaping; an undefined escape such as ``\\t`` is a fatal protocol error (spec)."""
    if "\\" not in value:
        return value

    def _one(match: re.Match[str]) -> str:
        seq = match.group(0)
        if seq not in _UNESCAPES:
            raise StompProtocolError(f"undefined escape sequence {seq!r} in header")
        return _UNESCAPES[seq]

    return _ESCAPE_RE.sub(_one, value)


def encode_frame(
    command: str,
    headers: dict[str, str] | None = None,
    body: bytes | str = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """One frame, NUL-terminated. ``content-length`` is the exact byte count of ``body`` (STOMP 1.2)."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    raw = command in _RAW_HEADER_COMMANDS
    out: dict[str, str] = {}
    for key, value in (headers or {}).items():
        out[key if raw else escape(key)] = str(value) if raw else escape(str(value))
    if content_length and (payload or command in ("MESSAGE", "SEND", "ERROR")):
        out["content-length"] = str(len(payload))
    return b"".join(stomp_utils.convert_frame(stomp_utils.Frame(command, out, payload)))


HEARTBEAT = b"\n"


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """``"cx,cy"`` -> (cx, cy) in ms; absent means ``0,0`` (STOMP 1.2 "Heart-beating")."""
    if value is None or value == "":
        return (0, 0)
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise StompProtocolError(
            f"heart-beat header must be 'cx,cy' with two non-negative integers, got {value!r}"
        )
    return int(parts[0]), int(parts[1])


def negotiate_heartbeats(server: tuple[int, int], client: tuple[int, int]) -> tuple[int, int]:
    """(server sends every ms, server expects the client every ms); 0 = off.

    stomp.py's ``calculate_heartbeats`` computes the client's side of the same rule; seen from the server its
    answer reads (client sends, client expects) = (server expects, server sends).
    """
    client_sends, client_expects = stomp_utils.calculate_heartbeats((str(server[0]), str(server[1])), client)
    return int(client_expects), int(client_sends)


class FrameParser:
    """Incremental parser: :meth:`feed` bytes, get whole frames back (``None`` = a heart-beat EOL)."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[StompFrame | None]:
        self._buf += data
        out: list[StompFrame | None] = []
        while True:
            eols = _EOL_PREFIX.match(self._buf)
            if eols:
                out.extend([None] * self._buf.count(b"\n", 0, eols.end()))
                del self._buf[: eols.end()]
            frame = self._next_frame()
            if frame is None:
                return out
            out.append(frame)

    def _next_frame(self) -> StompFrame | None:
        buf = self._buf
        end = stomp_utils.PREAMBLE_END_RE.search(buf)
        if end is None:
            nul = buf.find(b"\x00")
            if nul >= 0:
                raise StompProtocolError("frame ends before the blank line that closes its headers")
            if len(buf) > MAX_PREAMBLE:
                raise FrameTooLargeError(f"frame headers exceed {MAX_PREAMBLE} bytes")
            return None
        if end.start() > MAX_PREAMBLE:
            raise FrameTooLargeError(f"frame headers exceed {MAX_PREAMBLE} bytes")
        command, headers = parse_preamble(bytes(buf[: end.start()]))
        body_start = end.end()
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or not length.isascii():
                raise StompProtocolError(f"content-length is not a non-negative integer: {length[:40]!r}")
            size = int(length)
            if size > self._max_frame:
                raise FrameTooLargeError(f"frame body of {size} bytes exceeds the limit of {self._max_frame}")
            if len(buf) < body_start + size + 1:
                return None
            if buf[body_start + size] != 0:
                raise StompProtocolError("frame body is not followed by NUL at content-length")
            body_end = body_start + size
        else:
            body_end = buf.find(b"\x00", body_start)
            if body_end < 0:
                if len(buf) - body_start > self._max_frame:
                    raise FrameTooLargeError(f"frame body exceeds the limit of {self._max_frame} bytes")
                return None
        frame = StompFrame(command, headers, bytes(buf[body_start:body_end]))
        del buf[: body_end + 1]
        return frame


def parse_preamble(preamble: bytes) -> tuple[str, dict[str, str]]:
    """Command line and headers. Repeated headers: the first wins (STOMP 1.2 "Repeated Header Entries")."""
    try:
        text = preamble.decode("utf-8")
    except UnicodeDecodeError:
        raise StompProtocolError("frame headers are not UTF-8") from None
    lines = stomp_utils.LINE_END_RE.split(text)
    command = lines[0]
    if command not in CLIENT_COMMANDS:
        raise StompProtocolError(f"unknown command {command[:40]!r}")
    raw = command in _RAW_HEADER_COMMANDS
    headers: dict[str, str] = {}
    for line in lines[1:]:
        match = stomp_utils.HEADER_LINE_RE.fullmatch(line)
        if match is None:
            raise StompProtocolError(f"malformed header line {line[:40]!r}")
        key, value = match.group("key"), match.group("value")
        if not raw:
            key, value = unescape(key), unescape(value)
        headers.setdefault(key, value)
    return command, headers


__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_MAX_FRAME",
    "HEARTBEAT",
    "FrameParser",
    "StompFrame",
    "encode_frame",
    "escape",
    "negotiate_heartbeats",
    "parse_heartbeat",
    "parse_preamble",
    "unescape",
]
