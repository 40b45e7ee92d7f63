"""One place to configure structlog for both daemons.

Lines go to stderr: JSON objects when stderr is not a terminal (for log shippers), readable
key=value lines on a terminal. Context such as job_id, round and client_id is bound on loggers
(``log.bind(...)``) where it becomes known, so every line carries it without repeating it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, get_args

import structlog

from fedsilo.common.progress import BarAwareStream

LogLevel = Literal["debug", "info", "warning", "error"]
LEVELS: tuple[str, ...] = get_args(LogLevel)


SIGNIFICANT_DIGITS = 6  # a log line is for people: 0.9134521; metrics.jsonl keeps every digit


def round_floats(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Round the float fields of a log line to SIGNIFICANT_DIGITS (a structlog processor)."""
    for key, value in event.items():
        if isinstance(value, float):
            event[key] = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return event


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Route structlog to stderr at ``level``; JSON unless stderr is a TTY (or ``json`` says)."""
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            round_floats,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # On a terminal, log lines scroll above a progress bar (common/progress.py). A line
        # and its newline go out in one write: print's two let another thread's line, or the
        # daemon's exit, come between them.
        logger_factory=structlog.WriteLoggerFactory(
            file=sys.stderr if as_json else BarAwareStream(sys.stderr)  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    """Return a logger with ``context`` bound (e.g. ``job_id=7``)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger
