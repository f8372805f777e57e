"""Every Celery setting, read from the environment (see README "Configuration")."""

from __future__ import annotations

import os

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
