"""When a client's own task raises: the one line the server is told (TASK_FAILED) and shown.

The task's code (``load_data``, ``evaluate``, ``train``, and building its model) runs inside
``reporting``: if it raises, ``report(doing, line)`` tells the server, and the exception goes on
unchanged, so that each transport shows it its own way (the daemon prints one line and logs
the traceback; the simulator reports the client with its exception).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedsilo.common.errors import StopRequestedError, TaskLoadError

MAX_LINE = 300  # characters sent to the server (docs/protocol.md: receivers show at most 300)


def failure_line(exc: BaseException) -> str:
    """Return ``exc`` as one line, ``Type: message``, at most MAX_LINE characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= MAX_LINE else flat[: MAX_LINE - 3] + "..."


@contextmanager
def reporting(doing: str, report: Callable[[str, str], None]) -> Iterator[None]:
    """Run the task's code; if it raises, call ``report(doing, line)`` and re-raise.

    A stop request (a signal raised in the middle of training) and a task that cannot be built
    with its options (TaskLoadError: UNSUPPORTED_CONFIG, refused by the caller) are no failures.
    """
    try:
        yield
    except (StopRequestedError, TaskLoadError):
        raise
    except Exception as exc:
        report(doing, failure_line(exc))
        raise
