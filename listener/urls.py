"""Where to open the WebSocket, as pure functions (DESIGN.md "Reaching the Messenger").

``{baseurl}{endpoint}`` is a SockJS endpoint base for Spring Messengers (``GET {base}/info`` answers JSON,
the framed session is ``{base}/{server}/{session}/websocket``, the raw socket is ``{base}/websocket``) and the
WebSocket URL itself for plain STOMP-over-WebSocket brokers (RabbitMQ Web-STOMP ``/ws``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from listener.errors import ConfigError
from proxysync import sockjs

Framing = Literal["sockjs", "none"]
_WS_SCHEME = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


@dataclass(frozen=True, slots=True)
class Target:
    """One WebSocket to open: its URL and whether SockJS framing wraps the STOMP frames."""

    url: str
    framing: Framing


def _with_scheme(url: str, table: dict[str, str]) -> str:
    parts = urlsplit(url)
    scheme = table.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ConfigError(f"not an http(s)/ws(s) URL: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def to_ws(url: str) -> str:
    """``https://`` -> ``wss://``, ``http://`` -> ``ws://`` (``ws``/``wss`` kept)."""
    return _with_scheme(url, _WS_SCHEME)


def to_http(url: str) -> str:
    """The HTTP URL for the SockJS ``/info`` probe."""
    return _with_scheme(url, _HTTP_SCHEME)


def info_url(base: str) -> str:
    return to_http(base).rstrip("/") + "/info"


def target_for(mode: str, base: str) -> Target:
    """The socket for an explicit mode (``auto`` is resolved by the transport after probing ``/info``)."""
    if mode == "sockjs":
        return Target(sockjs.session_path(to_ws(base)), "sockjs")
    if mode == "sockjs-raw":
        return Target(to_ws(base).rstrip("/") + "/websocket", "none")
    if mode == "websocket":
        return Target(to_ws(base), "none")
    raise ConfigError(f"unknown transport {mode!r} (auto, sockjs, sockjs-raw, websocket)")


def host_and_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ws/http URL, with the scheme's default port."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    return parts.hostname or "localhost", parts.port or (443 if secure else 80)
