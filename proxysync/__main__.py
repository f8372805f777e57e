from __future__ import annotations

from proxysync.cli import main

main()
