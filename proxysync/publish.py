"""``proxysync publish``: send one event to a Messenger, so an operator can exercise a real deployment.

Two ways out: the stand-in's HTTP ``POST /publish`` (``--url``), or a STOMP SEND through stomp.py to any
STOMP broker (``--stomp-url ws://host:port/path``, ``wss://...``, ``stomp://host:61613``, ``stomp+ssl://...``).
The body is built in the original's format and validated with the listener's own parser first, so what we
send is exactly what the listener accepts.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import click

from proxysync.constants import DEFAULT_TOPIC, topic_destination
from proxysync.events import EventError, EventType, MessengerEvent, parse_event

DEFAULT_URL = "http://127.0.0.1:8090"
SOURCE = "proxysync-cli"


def build_body(*, type_: str | None, tenant: str | None, app: str | None, key: str | None,
               service: str | None, event_id: str | None, json_file: TextIO | None) -> dict[str, Any]:
    """The frame body: ``{"payload": {...}, "timestamp": ISO-8601, "source": "proxysync-cli"}``.

    ``--json`` may hold the whole body (an object with ``payload``) or just the payload; options given on the
    command line override the file's payload fields.
    """
    body: dict[str, Any] = {}
    if json_file is not None:
        try:
            loaded = json.load(json_file)
        except ValueError as exc:
            raise EventError("not_json", f"--json is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise EventError("not_object", "--json must hold a JSON object")
        body = loaded if "payload" in loaded else {"payload": loaded}
    payload = body.get("payload")
    payload = dict(payload) if isinstance(payload, dict) else ({} if payload is None else payload)
    if isinstance(payload, dict):
        given = {"type": type_, "tenantId": tenant, "appId": app, "key": key, "serviceName": service,
                 "eventId": event_id}
        payload |= {name: value for name, value in given.items() if value is not None}
    body["payload"] = payload
    body.setdefault("timestamp", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    body.setdefault("source", SOURCE)
    return body


def post_to_standin(url: str, destination: str, data: bytes, *, token: str | None, timeout: float) -> int:
    """``POST {url}/publish?destination=...``; returns how many subscriptions it reached."""
    target = f"{url.rstrip('/')}/publish?destination={quote(destination, safe='')}"
    if urlsplit(target).scheme not in ("http", "https"):
        raise click.ClickException(f"--url must be http:// or https://, got {url!r}")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(target, data=data, headers=headers, method="POST")  # noqa: S310 (checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{target} answered HTTP {exc.code}: {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the Messenger stand-in at {url}: {exc}") from None
    return int(answer.get("delivered", 0))


class _Receipts:
    """stomp.py listener: remembers RECEIPT ids and the first ERROR, so we know the broker took the SEND."""

    def __init__(self) -> None:
        self.receipts: set[str] = set()
        self.error: str | None = None
        self.changed = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        self.receipts.add(frame.headers.get("receipt-id", ""))
        self.changed.set()

    def on_error(self, frame: Any) -> None:
        self.error = frame.headers.get("message") or str(frame.body)[:200]
        self.changed.set()

    def on_disconnected(self) -> None:
        self.changed.set()


def default_ca_bundle() -> str | None:
    """System CA file (what OpenSSL would use), else certifi's: stomp.py verifies nothing without one."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.exists(candidate):
            return candidate
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def send_stomp(stomp_url: str, destination: str, data: bytes, *, vhost: str | None, token: str | None,
               login: str | None, passcode: str | None, timeout: float, ca_bundle: str | None = None) -> None:
    """CONNECT, SEND with a receipt, wait for the RECEIPT (the broker has the message), DISCONNECT."""
    import stomp

    parts = urlsplit(stomp_url)
    host, scheme = parts.hostname or "127.0.0.1", parts.scheme
    tls = scheme in ("wss", "stomp+ssl", "stomps")
    port = parts.port or {"ws": 80, "wss": 443}.get(scheme, 61614 if tls else 61613)
    auth = {"Authorization": f"Bearer {token}"} if token else None
    if scheme in ("ws", "wss"):
        conn = stomp.WSStompConnection([(host, port)], ws_path=parts.path or "/", vhost=vhost or host,
                                       header=auth, reconnect_attempts_max=1, timeout=timeout)
    elif scheme in ("stomp", "stomp+ssl", "stomps", "tcp"):
        conn = stomp.Connection12([(host, port)], vhost=vhost or host, reconnect_attempts_max=1,
                                  timeout=timeout)
    else:
        raise click.ClickException(f"--stomp-url must be ws(s):// or stomp(+ssl)://, not {scheme!r}")
    if tls:
        ca_certs = ca_bundle or default_ca_bundle()
        if ca_certs is None:
            raise click.ClickException("no CA bundle found to verify TLS: pass --ca-bundle")
        conn.set_ssl(for_hosts=[(host, port)], ca_certs=ca_certs)
    receipts = _Receipts()
    conn.set_listener("publish", receipts)
    connect_headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        conn.connect(login, passcode, wait=True, headers=connect_headers)
    except Exception as exc:
        raise click.ClickException(f"cannot connect to {stomp_url}: {receipts.error or exc}") from None
    receipt = f"publish-{uuid.uuid4().hex[:12]}"
    try:
        headers = {"receipt": receipt} | ({"authorization": f"Bearer {token}"} if token else {})
        conn.send(destination, data, content_type="application/json", headers=headers)
        if not _wait(lambda: receipt in receipts.receipts or receipts.error is not None, receipts, timeout):
            raise click.ClickException(f"{stomp_url} did not confirm the SEND within {timeout:g} s")
        if receipts.error is not None:
            raise click.ClickException(f"{stomp_url} refused the SEND: {receipts.error}")
    finally:
        if conn.is_connected():
            conn.disconnect()


def _wait(done: Any, receipts: _Receipts, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        receipts.changed.wait(min(left, 0.2))
        receipts.changed.clear()
    return True


@click.command(name="publish")
@click.option("--type", "type_", type=click.Choice([t.value for t in EventType]), help="Event type.")
@click.option("--tenant", help="payload.tenantId")
@click.option("--app", help="payload.appId")
@click.option("--key", help="payload.key (tenant#app#path#KIND#env)")
@click.option("--service", help="payload.serviceName")
@click.option("--event-id", help="payload.eventId (default: the listener hashes the body)")
@click.option("--json", "json_file", type=click.File("r"), help="Body or payload as JSON ('-' = stdin).")
@click.option("--url", envvar="MESSENGER_URL", default=DEFAULT_URL, show_default=True,
              help="The stand-in's HTTP base URL (env MESSENGER_URL).")
@click.option("--stomp-url", envvar="MESSENGER_STOMP_URL",
              help="Send through STOMP instead: ws://host:port/ws, wss://..., stomp://host:61613.")
@click.option("--stomp-host", help="STOMP 'host' header (virtual host; '/' for RabbitMQ).")
@click.option("--destination", default=topic_destination(DEFAULT_TOPIC), show_default=True)
@click.option("--token", envvar="MESSENGER_TOKEN", help="Bearer token (env MESSENGER_TOKEN). Never printed.")
@click.option("--login", envvar="STOMP_LOGIN", help="STOMP login (e.g. guest for RabbitMQ).")
@click.option("--passcode", envvar="STOMP_PASSCODE", help="STOMP passcode.")
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for a broker.")
@click.option("--ca-bundle", envvar="WEBSOCKET_CLIENT_CA_BUNDLE",
              type=click.Path(exists=True, dir_okay=False),
              help="CA file to verify wss:// and stomp+ssl:// (default: the system's).")
@click.option("--dry-run", is_flag=True, help="Validate and print the body; send nothing.")
@click.pass_context
def publish(ctx: click.Context, *, type_: str | None, tenant: str | None, app: str | None, key: str | None,
            service: str | None, event_id: str | None, json_file: TextIO | None, url: str,
            stomp_url: str | None, stomp_host: str | None, destination: str, token: str | None,
            login: str | None, passcode: str | None, timeout: float, ca_bundle: str | None,
            dry_run: bool) -> None:
    """Send one event to a Messenger: the stand-in's POST /publish, or any STOMP broker (--stomp-url)."""
    if type_ is None and json_file is None:
        raise click.UsageError("give --type (with its fields) or --json FILE")
    try:
        body = build_body(type_=type_, tenant=tenant, app=app, key=key, service=service, event_id=event_id,
                          json_file=json_file)
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        event: MessengerEvent = parse_event(data)
    except EventError as exc:
        click.echo(f"refused: not a valid event ({exc.reason}): {exc}", err=True)
        ctx.exit(2)
        return
    if dry_run:
        click.echo(data.decode("utf-8"))
        return
    if stomp_url:
        send_stomp(stomp_url, destination, data, vhost=stomp_host, token=token, login=login,
                   passcode=passcode, timeout=timeout, ca_bundle=ca_bundle)
        where, delivered = stomp_url, "accepted (RECEIPT)"
    else:
        count = post_to_standin(url, destination, data, token=token, timeout=timeout)
        where, delivered = url, f"delivered to {count} subscriber(s)"
    click.echo(f"published {event.type.value} event_id={event.event_id} to {where} {destination}: "
               f"{delivered}")
