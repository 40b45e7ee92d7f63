"""The job's checkpoint: everything needed to continue after the last completed round.

Written atomically (temp file, fsync, rename) in the background so that the disk never holds up
a round (``CheckpointWriter``), in fedsilo's own raw format (``server/checkpoint_file.py``: a
JSON header and the tensors' bytes, no pickle, streamed past the page cache). ``--resume``
reads it back and checks that it belongs to this job.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch

from fedsilo.common.errors import ConfigError
from fedsilo.server import checkpoint_file
from fedsilo.server.checkpoint_file import CheckpointCancelledError
from fedsilo.server.config import ServerConfig

CHECKPOINT_FILE = "checkpoint.ckpt"
CHECKPOINT_NICENESS = 10


@dataclass(frozen=True)
class Checkpoint:
    """The state of a job after round ``round`` completed."""

    round: int
    global_state: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    pending_row: dict[str, Any]
    identity: dict[str, Any]
    # JSON-able state of the job's parts beyond the strategy (e.g. the DP accountant's).
    extra: dict[str, Any] = field(default_factory=dict)
    # Set to stop a write in progress (its memory is wanted): the write is abandoned.
    cancel: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


def job_identity(config: ServerConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return {
        "job_id": config.job_id,
        "task": config.task,
        "task_options": dict(config.task_options),
        "seed": config.seed,
        "strategy": config.strategy,
        "strategy_options": dict(config.strategy_options),
    }


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    checkpoint_file.save(
        path,
        {
            "round": checkpoint.round,
            "pending_row": checkpoint.pending_row,
            "identity": checkpoint.identity,
            "extra": checkpoint.extra,
        },
        {"model": checkpoint.global_state, "strategy": checkpoint.strategy_state},
        cancel=checkpoint.cancel,
    )


class CheckpointWriter:
    """Writes checkpoints on a background thread, so that the disk never holds up a round.

    ``offer`` starts writing a checkpoint unless one is still being written, or unless less
    than ``SPACING`` times the last write's duration has passed since that write began: then
    the new one is skipped, which bounds the time spent checkpointing to about 1/SPACING of the
    job whatever the model size, with no knob (a small model is checkpointed every round, a
    256 MiB one every few rounds). A crash resumes from the last checkpoint written, and
    replaying the rounds since gives the same model. ``wait`` blocks until no write is in
    progress and re-raises the error of the last one; ``saved_round`` is the round last written.
    """

    SPACING = 10.0
    MAX_CANCELLED_IN_A_ROW = 3

    def __init__(self, path: Path, log: structlog.typing.FilteringBoundLogger) -> None:
        self.path = path
        self._log = log
        self._thread: threading.Thread | None = None
        self._writing: Checkpoint | None = None
        self._cancelled_in_a_row = 0
        self._error: BaseException | None = None
        self._last_start = -math.inf
        self._last_seconds = 0.0
        self.saved_round: int | None = None

    @property
    def busy(self) -> bool:
        """Whether a write is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def offer(self, checkpoint: Checkpoint, force: bool = False) -> bool:
        """Start writing ``checkpoint`` unless it is too soon (see above); return whether it did.

        With ``force``, wait for a write in progress and write this one regardless.
        """
        now = time.monotonic()
        too_soon = now - self._last_start < self.SPACING * self._last_seconds
        if not force and (self.busy or too_soon):
            self._log.debug("checkpoint_skipped", round=checkpoint.round)
            return False
        self.wait()
        self._last_start = now
        self._writing = checkpoint

        def run() -> None:
            _lower_priority_of_this_thread()
            self._log.debug("checkpoint_writing", round=checkpoint.round)
            started = time.monotonic()
            try:
                save_checkpoint(self.path, checkpoint)
            except CheckpointCancelledError:
                self._last_start = -math.inf  # a write that did not happen spaces nothing
                self._log.info("checkpoint_cancelled", round=checkpoint.round)
            except BaseException as exc:  # re-raised by wait() in the job's thread
                self._error = exc
            else:
                self._cancelled_in_a_row = 0
                self._last_seconds = time.monotonic() - started
                self.saved_round = checkpoint.round
                self._log.info(
                    "checkpoint_saved", round=checkpoint.round, seconds=round(self._last_seconds, 3)
                )

        self._thread = threading.Thread(target=run, name="checkpoint", daemon=True)
        self._thread.start()
        return True

    def release(self) -> bool:
        """Make sure no write reads the memory it was given; return whether one had to stop.

        A write still running when its tensors' memory is wanted (the next round's buffers, a
        strategy about to change its state) is cancelled: a newer checkpoint is offered right
        after. Only on a disk slower than the rounds, after ``MAX_CANCELLED_IN_A_ROW``
        cancellations in a row, is the next one waited for, so that a resume never has to
        replay more than a few rounds' worth of checkpoint intervals.
        """
        if not self.busy or self._writing is None:
            self.wait()
            return False
        if self._cancelled_in_a_row >= self.MAX_CANCELLED_IN_A_ROW:
            self._log.warning("checkpoint_waited_for", round=self._writing.round)
            self.wait()
            return False
        self._cancelled_in_a_row += 1
        self._writing.cancel.set()
        self.wait()
        return True

    def wait(self) -> None:
        """Block until no write is in progress; raise the error of the last one, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._writing = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def _lower_priority_of_this_thread() -> None:
    """Let the transfers of the next round run first on a busy CPU (Linux: per-thread nice)."""
    # Not Linux, or not allowed: write at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_NICENESS)


def load_checkpoint(path: Path, identity: Mapping[str, Any]) -> Checkpoint:
    """Read a checkpoint and check it belongs to the job described by ``identity``."""
    header, groups = checkpoint_file.load(path)
    if header.get("identity") != dict(identity):
        raise ConfigError(
            f"checkpoint {path} belongs to another job ({header.get('identity')}); "
            f"this one is {dict(identity)}"
        )
    try:
        return Checkpoint(
            round=int(header["round"]),
            global_state=groups.get("model", {}),
            strategy_state=groups.get("strategy", {}),
            pending_row=dict(header["pending_row"]),
            identity=dict(header["identity"]),
            extra=dict(header.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint {path}: {exc}") from exc
