"""When a member's own task raises: the one line the server is told (TASK_FAILED) and shown.

The task's code (building its model, ``load_data``, ``evaluate``, ``train``) runs inside
``task_code``, which turns whatever it raises into TaskFailedError, the task's exception as its
cause. The protocol runs each step through ``telling_server``, so that a step in which the task
failed sends one Error(TASK_FAILED) before the error goes on; each transport then shows it its
own way (the daemon records it in audit.jsonl, prints one line and logs the traceback at debug
level; the simulator reports the client with the task's exception).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fedsilo.common.errors import (
    FedsiloError,
    StopRequestedError,
    TaskFailedError,
    TaskLoadError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.text import one_line


def failure_line(exc: BaseException) -> str:
    """Return ``exc`` as one line, ``Type: message``, short enough to send and print."""
    return one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


@contextmanager
def task_code(doing: str) -> Iterator[None]:
    """Run the task's code; raise TaskFailedError (from the task's exception) if it raises.

    A stop request (a signal raised in the middle of training) and a task that cannot be built
    with its options (TaskLoadError, refused as UNSUPPORTED_CONFIG) are no failures of it.
    """
    try:
        yield
    except (StopRequestedError, TaskLoadError):
        raise
    except Exception as exc:
        code = exc.exit_code if isinstance(exc, FedsiloError) else TaskFailedError.exit_code
        raise TaskFailedError(doing, failure_line(exc), code) from exc


def telling_server(
    step: Callable[[Any], None], payload: Any, send: Callable[[pb.ClientMessage], None]
) -> None:
    """Run one protocol step; if the task failed in it, tell the server, then re-raise."""
    try:
        step(payload)
    except TaskFailedError as exc:
        send(pb.ClientMessage(error=pb.Error(code=pb.TASK_FAILED, message=exc.line)))
        raise
