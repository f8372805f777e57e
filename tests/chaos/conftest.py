"""Fixtures for the fault-injection suite, and the table of counts printed at the end of every run.

Each test builds its own :class:`tests.support.pipeline.Pipeline` (private broker Redis, Messenger stand-in,
listener and worker subprocesses) and records one row per fault: sent, applied, duplicates (an effect applied
twice), redelivered (a second delivery the worker recognised and skipped), resynced (missed while nobody was
subscribed, covered by a later gap resync), brpop* (taken off the broker by kombu's Redis-transport window and
still missing at the end: the listener's delivery confirmation re-sends those, so it must stay 0) and lost
(anything else; must be 0). The rows go to the terminal summary, so CI
output shows them without ``-s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import RESULTS, TOKEN, Counts, Pipeline


@pytest.fixture
def pipeline(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, redis_url, prefix).start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def secured_pipeline(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Pipeline]:
    """A pipeline whose Messenger stand-in requires the bearer token ``TOKEN``."""
    p = Pipeline(tmp_path, redis_url, prefix, token=TOKEN).start()
    try:
        yield p
    finally:
        p.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.write_sep("=", "chaos: counts per fault (lost must be 0)")
    tr.write_line(Counts.HEADER)
    for row in RESULTS:
        tr.write_line(row.row())
    for row in RESULTS:
        for note in row.notes:
            tr.write_line(f"  {row.fault.split()[0]}: {note}")
    if any(row.window for row in RESULTS):
        tr.write_line("  brpop*: taken off the Redis broker by a worker that died (or lost the broker) "
                      "before kombu recorded it as unacked (celery/kombu#305): the Redis transport's "
                      "at-most-once window")
