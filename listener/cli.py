"""``proxysync listen`` (and ``python -m listener``): run the listener until SIGTERM."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from listener.errors import ListenerError
from listener.logs import setup_logging
from listener.settings import load_settings


@click.command(name="listen")
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="application.yml in the original shape (websocket.client.*); the environment wins over it.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def listen(config: Path | None, log_level: str) -> None:
    """Run the listener: Messenger subscription -> Celery tasks (settings: README "Listener")."""
    try:
        settings = load_settings(config)
    except (ValidationError, ListenerError) as exc:
        raise click.ClickException(f"invalid listener settings: {exc}") from None
    setup_logging(settings.log_format, level=getattr(logging, log_level.upper()))
    if not settings.enabled:
        logging.getLogger("listener").info(
            "[WS-Client] WebSocket client is disabled (WEBSOCKET_CLIENT_ENABLED=false): nothing to do"
        )
        sys.exit(0)
    from listener.service import run  # Celery and friends: only when there is something to run

    try:
        code = run(settings)
    except ListenerError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
