"""``proxysync messenger``: run the stand-in in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from types import FrameType

import click

from messenger.frames import DEFAULT_MAX_FRAME
from messenger.server import SOCKJS_HEARTBEAT_S, MessengerServer
from proxysync.constants import DEFAULT_ENDPOINT

DEFAULT_PORT = 8090


@click.command(name="messenger")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="MESSENGER_HOST", help="Bind address.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, envvar="MESSENGER_PORT",
              help="One port for WebSocket, SockJS and the HTTP API (0 = any free port).")
@click.option("--token", default=None, envvar="MESSENGER_TOKEN",
              help="Require this bearer token (Authorization on the upgrade, or authorization/passcode on "
                   "CONNECT). Env MESSENGER_TOKEN.")
@click.option("--heartbeat", "heartbeat_ms", default=10_000, show_default=True, type=int,
              envvar="MESSENGER_HEARTBEAT", help="Server STOMP heart-beat, ms (0 = none).")
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True, envvar="MESSENGER_ENDPOINT",
              help="SockJS endpoint base path.")
@click.option("--max-frame", default=DEFAULT_MAX_FRAME, show_default=True, type=int,
              help="Largest STOMP frame accepted from a client or the publish API, in bytes.")
@click.option("--tls-cert", envvar="MESSENGER_TLS_CERT", type=click.Path(exists=True, dir_okay=False),
              help="Serve https/wss with this certificate chain (PEM).")
@click.option("--tls-key", envvar="MESSENGER_TLS_KEY", type=click.Path(exists=True, dir_okay=False),
              help="Private key for --tls-cert (PEM).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def messenger(*, host: str, port: int, token: str | None, heartbeat_ms: int, endpoint: str, max_frame: int,
              tls_cert: str | None, tls_key: str | None, log_level: str) -> None:
    """Run the Messenger stand-in: STOMP 1.2 over WebSocket (raw, SockJS) and POST /publish."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    server = MessengerServer(host, port, token=token, heartbeat_ms=heartbeat_ms, endpoint=endpoint,
                             sockjs_heartbeat_s=SOCKJS_HEARTBEAT_S, max_frame=max_frame, ssl_context=context)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handlers before the "listening" line: a supervisor may signal us as soon as it reads it.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    # One line a supervisor (proxysync up) or a human can read; the token is never printed.
    click.echo(f"messenger stand-in listening on {server.url} (SockJS {server.sockjs_url}, "
               f"WebSocket {server.ws_url}, POST {server.url}/publish?destination=..., "
               f"auth {'on' if token else 'off'})", err=False)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        click.echo("messenger stand-in stopped")
