"""The Celery app (``celery -A tasks worker``, ``celery -A tasks flower``) and the proxysync tasks.

``app`` is built from ``celeryconfig`` (Celery settings) and :class:`tasks.settings.WorkerSettings` (cache,
retry policy, metrics), both read from the environment. Tasks are registered by the names in
:mod:`proxysync.constants`; senders use those names and never import this package.
"""

from __future__ import annotations

from tasks.factory import create_app

app = create_app()

__all__ = ["app", "create_app"]
