"""The client's own record of what it agreed to and what left its network: ``audit.jsonl``.

One JSON object per line, appended and fsynced before the client goes on, so a line is on disk
before what it describes is sent (an update is recorded before its first byte leaves). A
``model_received`` line is only flushed: it is fsynced with the round's ``update_sent`` line,
before anything of that round leaves (one fsync per round: on a busy disk an fsync took 7 ms
here). Every line has ``time`` (UTC, ISO 8601), ``event`` and ``client`` (this client's name);
the events and their fields are listed in README.md, "The client's audit log".
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedsilo.common.errors import ConfigError


class AuditLog:
    """Appends events to one ``audit.jsonl``, each fsynced."""

    def __init__(self, path: Path, client: str) -> None:
        self.path = path
        self.client = client
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Opened once and kept: append mode, so every write lands at the end.
            self._handle = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"out: cannot write {path}: {exc.strerror}") from exc

    def record(self, event: str, durable: bool = True, **fields: Any) -> None:
        """Append one event with ``fields``; fsync it (and all before it) when ``durable``."""
        row = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            "client": self.client,
            **fields,
        }
        try:  # the C encoder, in one pass; a non-finite float is rare enough to pay a retry
            line = json.dumps(row, allow_nan=False)
        except ValueError:
            line = json.dumps(_plain(row))
        self._handle.write(line + "\n")
        self._handle.flush()
        if durable:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def _plain(value: Any) -> Any:
    """Make a value JSON-safe: non-finite floats become strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
