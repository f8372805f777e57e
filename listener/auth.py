"""Bearer tokens for the Messenger, and the logging filter that keeps them out of every log line.

Three sources, in order of preference: ``WEBSOCKET_CLIENT_TOKEN`` (fixed), ``WEBSOCKET_CLIENT_TOKEN_FILE``
(re-read on every connect, so a sidecar can rotate it), or OAuth2 client credentials against ``IAM_TOKEN_URL``
(RFC 6749 section 4.4; cached until shortly before ``expires_in``). Every token and client secret handed out
is registered with :class:`RedactingFilter`, which the listener installs on its log handlers (stomp.py logs
whole frames, ``authorization`` header included, at DEBUG).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from listener.errors import AuthError
from listener.settings import ListenerSettings

REDACTED = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never log ``value`` (tokens shorter than 4 characters are not worth hiding and would mangle logs)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        found = [s for s in _secrets if s in text]
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Replaces every registered secret in a record's message (and traceback) by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class TokenSource(Protocol):
    def get(self) -> str | None:
        """The token to send now (``None``: connect without one)."""

    def invalidate(self) -> None:
        """The Messenger refused the last token: do not hand it out again."""


class NoToken:
    def get(self) -> str | None:
        return None

    def invalidate(self) -> None:
        return None


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token.strip()
        register_secret(self._token)

    def get(self) -> str | None:
        return self._token

    def invalidate(self) -> None:
        return None  # nothing better to offer; the backoff paces the retries


class FileToken:
    """Re-read on every connect: a rotated file is picked up by the next (re)connection."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self) -> str | None:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"cannot read token file {self.path}: {exc.strerror or exc}") from None
        if not token:
            raise AuthError(f"token file {self.path} is empty")
        register_secret(token)
        return token

    def invalidate(self) -> None:
        return None


class ClientCredentials:
    """OAuth2 client-credentials grant, cached until ``refresh_margin_s`` before the token expires."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_s: float = 10.0,
        refresh_margin_s: float = 30.0,
    ) -> None:
        self.url, self.client_id, self._secret = url, client_id, client_secret
        self.timeout_s, self.refresh_margin_s = timeout_s, refresh_margin_s
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0
        register_secret(client_secret)

    def get(self) -> str | None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._token, lifetime = self._fetch()
                margin = min(self.refresh_margin_s, lifetime / 2)
                self._expires_at = time.monotonic() + lifetime - margin
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        body = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
        basic = base64.b64encode(f"{self.client_id}:{self._secret}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's IAM_TOKEN_URL
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Basic {basic}",
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        self.fetches += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                doc = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise AuthError(f"token endpoint {self.url} answered HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise AuthError(f"token endpoint {self.url} failed: {exc}") from None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token endpoint {self.url} returned no access_token")
        register_secret(token)
        expires = doc.get("expires_in", 300)
        lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 300.0
        return token, lifetime


def token_source(settings: ListenerSettings) -> TokenSource:
    """The configured source: fixed token, token file, IAM client credentials, or none."""
    if settings.token is not None and settings.token.get_secret_value():
        return StaticToken(settings.token.get_secret_value())
    if settings.token_file is not None:
        return FileToken(settings.token_file)
    if settings.iam_token_url:
        if not settings.iam_client_id or settings.iam_client_secret is None:
            raise AuthError("IAM_TOKEN_URL needs IAM_CLIENT_ID and IAM_CLIENT_SECRET")
        return ClientCredentials(
            settings.iam_token_url, settings.iam_client_id, settings.iam_client_secret.get_secret_value()
        )
    return NoToken()
