"""``proxysync dead list|replay``: show dead letters, and send them again by name.

Replay needs no worker code: it sends the recorded task name and keyword arguments through the broker
configured by ``celeryconfig`` (``CELERY_BROKER_URL``, ``PROXYSYNC_QUEUE_PREFIX``), with the original task id,
then removes the letter from the stream (``--keep`` leaves it). An event that was applied meanwhile is skipped
by the worker as a duplicate, so replaying is always safe.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import redis

from cache.errors import CacheError
from cache.names import dead_stream
from tasks import deadletter
from tasks.settings import WorkerSettings


def _client(settings: WorkerSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.cache_url(), socket_timeout=5, socket_connect_timeout=5)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group(help="List or replay dead letters (the {prefix}:dead stream on the cache Redis).")
def dead() -> None:
    pass


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=int, default=None, help="At most this many (oldest first).")
def list_(as_json: bool, count: int | None) -> None:
    """Show dead letters, oldest first."""
    settings = WorkerSettings()
    try:
        letters = deadletter.read(_client(settings), settings.cache_prefix, count=count)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for d in letters:
            click.echo(json.dumps({**d.fields(), "id": d.id, "kwargs": d.kwargs, "args": d.args}))
        return
    click.echo(f"{len(letters)} dead letter(s) in {dead_stream(settings.cache_prefix)}")
    for d in letters:
        click.echo(f"{d.id}  {_when(d.failed_at)}  {d.task}  reason={d.reason}  attempts={d.attempts}  "
                   f"task_id={d.task_id}")
        click.echo(f"    kwargs={json.dumps(d.kwargs, sort_keys=True)}")
        click.echo(f"    error={d.error}")


@dead.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter.")
@click.option("--keep", is_flag=True, help="Leave the letters in the stream after sending.")
def replay(ids: tuple[str, ...], all_: bool, keep: bool) -> None:
    """Send dead letters again by task name (the given IDs, or --all)."""
    if bool(ids) == all_:
        raise click.UsageError("give dead letter IDs or --all (not both)")
    settings = WorkerSettings()
    client = _client(settings)
    prefix = settings.cache_prefix
    try:
        if all_:
            letters = deadletter.read(client, prefix)
        else:
            found = [(i, deadletter.get(client, prefix, i)) for i in ids]
            missing = [i for i, d in found if d is None]
            if missing:
                raise click.ClickException(f"no dead letter {', '.join(missing)} in {dead_stream(prefix)}")
            letters = [d for _, d in found if d is not None]
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    from tasks.factory import sender_app

    app = sender_app()
    sent = 0
    for d in letters:
        if d.reason == "refused":
            click.echo(f"skipped {d.id}: {d.task} was refused undecoded (content type), nothing to replay")
            continue
        app.send_task(d.task, args=d.args, kwargs=d.kwargs, task_id=d.task_id or None)
        if not keep:
            deadletter.remove(client, prefix, d.id)
        sent += 1
        args = json.dumps(d.kwargs, sort_keys=True)
        click.echo(f"replayed {d.id}: {d.task} task_id={d.task_id} kwargs={args}")
    click.echo(f"{sent} dead letter(s) replayed")
