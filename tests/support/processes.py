"""Stopping a child the suite started in its own process group: SIGTERM, a grace period, then the group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM ``proc``; after ``grace`` s SIGKILL its process group (a prefork worker's children too)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(OSError):  # nothing of the group may outlive the test
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
