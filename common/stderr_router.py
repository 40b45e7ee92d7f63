"""Keep a daemon's JSON log JSON: lines written to stderr by native code become JSON lines too.

gRPC's C core writes its own lines (a refused TLS handshake, an expired certificate) straight to
file descriptor 2, in its own format, which breaks a log shipper that reads JSON lines. While
a daemon runs with a JSON log, fd 2 is a pipe read by a thread: a line that already is a JSON
object (structlog's) passes through unchanged; any other line is wrapped as one, e.g.::

    {"event": "grpc_core", "level": "error", "message": "... certificate has expired",
     "timestamp": "...", "job_id": 3}

fl-server and fl-client run their work under it (``routed_stderr``); the real stderr comes back
when the work ends, before the program's last line (its error, its summary) is printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO

# gRPC's C-core log prefix: severity letter, date, time, thread, file:line]
_GRPC_LINE = re.compile(r"^([DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ?(.*)$")
_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "critical"}
MAX_LINE_CHARS = 2000


def wrap_line(line: str, context: dict[str, object]) -> str:
    """Return ``line`` if it is a JSON object already, else a JSON object holding it."""
    text = line.rstrip("\n")
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text + "\n"
        except ValueError:
            pass
    match = _GRPC_LINE.match(text)
    event, level, message = (
        ("grpc_core", _LEVELS[match.group(1)], match.group(2))
        if match
        else ("stderr", "warning", text)
    )
    record = {
        "event": event,
        "level": level,
        "message": message[:MAX_LINE_CHARS],
        "timestamp": datetime.now(timezone.utc).isoformat(),
        **context,
    }
    return json.dumps(record) + "\n"


class StderrRouter:
    """Routes everything written to fd 2 through ``wrap_line`` until ``stop``."""

    def __init__(self, context: dict[str, object]) -> None:
        self._context = context
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Put a pipe on fd 2 and start copying it, wrapped, to the real stderr."""
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        source = os.fdopen(read_end, "r", encoding="utf-8", errors="replace")
        target = os.fdopen(os.dup(self._saved), "w", encoding="utf-8", buffering=1)
        self._thread = threading.Thread(
            target=self._copy, args=(source, target), name="stderr-router", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Give fd 2 back; return once every line written so far is out."""
        if self._saved is None or self._thread is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the copier sees EOF
        os.close(self._saved)
        self._saved = None
        self._thread.join(timeout=10)

    def _copy(self, source: IO[str], target: IO[str]) -> None:
        with source, target:
            for line in source:
                target.write(wrap_line(line, self._context))


@contextmanager
def routed_stderr(context: dict[str, object]) -> Iterator[None]:
    """Route fd 2 through ``wrap_line`` while the body runs, unless stderr is a terminal."""
    if sys.stderr.isatty():
        yield
        return
    router = StderrRouter(context)
    router.start()
    try:
        yield
    finally:
        router.stop()
