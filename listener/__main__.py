"""``python -m listener``: the same as ``proxysync listen``."""

from __future__ import annotations

from listener.cli import listen

if __name__ == "__main__":
    listen(prog_name="python -m listener")
