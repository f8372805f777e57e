"""``proxysync`` command line.

Each subcommand lives beside the code it drives and is imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> ("module:attribute", one-line help). Declared once; modules are imported lazily so `--help` is fast
# and a gateway host without the listener's dependencies can still run `proxysync dead list`.
COMMANDS: dict[str, tuple[str, str]] = {
    "listen": ("listener.cli:listen", "Run the listener: Messenger subscription -> Celery tasks."),
    "messenger": ("messenger.cli:messenger", "Run the Messenger stand-in (development, demo, tests)."),
    "publish": ("proxysync.publish:publish", "Send an event to a Messenger (stand-in or any STOMP broker)."),
    "dead": ("tasks.deadcli:dead", "List or replay dead letters."),
    "status": ("proxysync.status:status", "Listener health, queues, workers, dead letters, feed, cache."),
    "up": ("proxysync.stack:up", "Run the whole local stack (Redis, Messenger, listener, worker, Flower)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _not_built(cmd_name, target[1])
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in sorted(COMMANDS.items())])


def _not_built(name: str, help_: str) -> click.Command:
    @click.command(name=name, help=help_, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def placeholder(args: Any) -> None:
        raise click.ClickException(f"'proxysync {name}' is not built yet in this version")

    return placeholder


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="proxysync")
def main() -> None:
    """proxysync: push configuration changes from the Messenger to the gateway fleet's route/auth cache."""


if __name__ == "__main__":
    main()
