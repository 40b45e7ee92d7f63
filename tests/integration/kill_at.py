"""Run fl-server (or fl-client) and kill -9 it from inside at the instant it logs an event.

    python -m tests.integration.kill_at MARKER EVENT [FIELD=VALUE ...] -- PROGRAM ARGS...

PROGRAM is the path of fl-server or fl-client (as ``Daemons.start`` puts it after a prefix).

A structlog processor, placed first, sees every event the server logs (run it with
``--log-level debug`` to reach the debug ones); the first event that matches (name and fields,
compared as strings) writes MARKER, naming the event, and sends SIGKILL to the process. So the
kill lands at a point of the job's life that a test names by its log event, never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from fedsilo.common import cli as common_cli
from fedsilo.common import logging as common_logging
from fedsilo.server.cli import main


def killer(marker: Path, event: str, fields: dict[str, str]) -> Any:
    """Return a structlog processor that kills this process on the first matching event."""

    def processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if event_dict.get("event") == event and all(
            str(event_dict.get(key)) == value for key, value in fields.items()
        ):
            marker.write_text(json.dumps({k: str(v) for k, v in event_dict.items()}))
            os.kill(os.getpid(), signal.SIGKILL)
        return event_dict

    return processor


def run(argv: list[str]) -> int:
    """Parse the wrapper's own arguments, install the killer, run fl-server with the rest."""
    split = argv.index("--")
    marker, event, *pairs = argv[:split]
    fields = dict(pair.split("=", 1) for pair in pairs)
    configure = common_logging.configure_logging

    def configure_with_killer(level: str = "info", json: bool | None = None) -> None:
        configure(level, json)
        processors = structlog.get_config()["processors"]
        structlog.configure(processors=[killer(Path(marker), event, fields), *processors])

    common_logging.configure_logging = configure_with_killer  # type: ignore[assignment]
    if hasattr(common_cli, "configure_logging"):
        common_cli.configure_logging = configure_with_killer  # type: ignore[attr-defined]
    program, *args = argv[split + 1 :]
    if program.endswith("fl-client"):
        from fedsilo.client.cli import main as client_main

        return client_main(args)
    return main(args)


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(run(sys.argv[1:]))
