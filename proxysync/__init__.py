"""proxysync: push configuration changes from the Messenger to the gateway fleet's route/auth cache."""

from __future__ import annotations

__version__ = "0.1.0"
