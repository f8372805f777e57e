"""``python -m messenger`` = ``proxysync messenger``."""

from __future__ import annotations

from messenger.cli import messenger

if __name__ == "__main__":
    messenger()
