"""Pure helpers over raw STOMP frames (STOMP 1.2), no sockets.

The transport refuses a frame larger than ``WEBSOCKET_CLIENT_MAX_FRAME`` without dropping the session: it
hands stomp.py a *headers-only* MESSAGE that keeps the original's headers (so it can still be ACKed and
counted) and carries :data:`OVERSIZE_HEADER` with the refused size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

OVERSIZE_HEADER = "x-proxysync-oversize"
_HEADER_SCAN = 64 * 1024  # headers live at the front; never scan a 3 MB body for them
_DROP = (b"content-length", b"content-type")
_AUTH_WORDS = re.compile(r"auth|token|denied|forbidden|credential|unauthori[sz]ed|\b40[13]\b", re.IGNORECASE)


def oversize_stub(frame: bytes, size: int) -> bytes:
    """A headers-only copy of ``frame`` (a MESSAGE) marked with its refused ``size``.

    Anything that is not a MESSAGE with a readable header block becomes an empty heart-beat (``\\n``): there
    is nothing to ACK and nothing worth keeping.
    """
    head = frame[:_HEADER_SCAN].lstrip(b"\r\n")
    end = head.find(b"\n\n")
    end_crlf = head.find(b"\r\n\r\n")
    if end_crlf != -1 and (end == -1 or end_crlf < end):
        end = end_crlf
    if end == -1:
        return b"\n"
    lines = head[:end].replace(b"\r\n", b"\n").split(b"\n")
    if not lines or lines[0] != b"MESSAGE":
        return b"\n"
    kept = [ln for ln in lines[1:] if ln and ln.split(b":", 1)[0].strip().lower() not in _DROP]
    marker = f"{OVERSIZE_HEADER}:{size}".encode()
    return b"\n".join([b"MESSAGE", *kept, marker, b"content-length:0", b"", b""]) + b"\x00"


def ack_id(headers: Mapping[str, str]) -> str | None:
    """The id to ACK a MESSAGE with: STOMP 1.2 ``ack`` header, else ``message-id`` (``ack`` absent)."""
    return headers.get("ack") or headers.get("message-id")


def looks_like_auth_error(text: str) -> bool:
    """Whether an ERROR frame's message/body says the credentials were refused."""
    return bool(_AUTH_WORDS.search(text))


def headers_of_truncated(head: bytes, sockjs: bool) -> bytes:
    """The STOMP header block found at the front of a truncated WebSocket frame (``b""`` if none).

    A SockJS frame is ``a["<JSON-escaped STOMP frame>", ...]``: the escaped header block ends at the first
    escaped blank line, so it can be decoded on its own.
    """
    if not sockjs:
        return head
    text = head.decode("utf-8", "replace")
    if not text.startswith('a["'):
        return b""
    end = text.find("\\n\\n", 3)
    if end == -1:
        return b""
    try:
        block = json.loads('"' + text[3:end] + '"')
    except ValueError:
        return b""
    return (block + "\n\n").encode("utf-8") if isinstance(block, str) else b""
