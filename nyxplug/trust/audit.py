"""The append-only JSON-lines audit log of every trust decision.

One line per decision (``accepted``/``refused``/``warning``, or an operator action such
as ``trust-add``), written with a single ``write`` on an ``O_APPEND`` descriptor, so
concurrent writers never interleave within a line and earlier lines are never rewritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

__all__ = ("AUDIT_FILE", "AuditLog")

AUDIT_FILE = "audit.jsonl"


class AuditLog:
    """Appends one JSON object per line to ``path`` (created with mode 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def record(self, event: str, decision: str, **fields: Any) -> dict[str, Any]:
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "decision": decision,
            **{key: value for key, value in fields.items() if value is not None},
        }
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far, oldest first (for ``nyxplug audit`` and tests)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
