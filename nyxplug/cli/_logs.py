"""``--log-format json``: one JSON object per log line, for log shippers.

Every record becomes ``{"time", "level", "logger", "message"}`` plus the plugin fields a
log call passes in ``extra`` - ``plugin``, ``plugin_id``, ``version``, ``frame_type`` -
and ``exception`` with the traceback when there is one, so a log pipeline filters by
plugin without parsing messages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

__all__ = ("PLUGIN_FIELDS", "JsonFormatter", "log_to_stderr")

#: The ``extra`` fields a record may carry about a plugin (kept as JSON fields).
PLUGIN_FIELDS = ("plugin", "plugin_id", "version", "frame_type")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in PLUGIN_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_to_stderr(kind: str) -> logging.Handler:
    """Send nyxplug's logs (INFO and up) to stderr as ``text`` or ``json``; returns the
    handler, for the caller to remove."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if kind == "json" else text)
    logger = logging.getLogger("nyxplug")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
