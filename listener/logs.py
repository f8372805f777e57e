"""Logging for the listener process: ``[WS-Client]`` lines as the original wrote them, text or JSON, and the
redaction filter on the handler so no bearer token ever reaches a log (stomp.py logs frames at DEBUG).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from listener.auth import RedactingFilter


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``LOG_FORMAT=json``)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text or record.exc_info:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(
    fmt: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """A root handler whose filter redacts every token (stomp.py logs frames, headers included, at DEBUG)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
