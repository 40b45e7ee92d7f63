"""The job's checkpoint: everything needed to continue after the last completed round.

Written atomically after every round (temp file, fsync, rename), in the background so that
the disk never holds up the next round (``CheckpointWriter``), as a plain torch.save of
tensors, numbers, strings, lists and dicts, so that it loads with ``weights_only=True``:
nothing in it can run code. ``--resume`` reads it back and checks that it belongs to this job.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from fedsilo.common.errors import ConfigError
from fedsilo.server.config import ServerConfig
from fedsilo.server.run_files import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_NICENESS = 10
FORMAT_VERSION = 2  # 2: client ids live in client_ids.jsonl, no longer here


@dataclass(frozen=True)
class Checkpoint:
    """The state of a job after round ``round`` completed."""

    round: int
    global_state: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    pending_row: dict[str, Any]
    identity: dict[str, Any]


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
    payload = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "global_state": checkpoint.global_state,
        "strategy_state": checkpoint.strategy_state,
        "pending_row": checkpoint.pending_row,
        "identity": checkpoint.identity,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


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

    def __init__(self, path: Path, log: structlog.typing.FilteringBoundLogger) -> None:
        self.path = path
        self._log = log
        self._thread: threading.Thread | None = None
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

        def run() -> None:
            _lower_priority_of_this_thread()
            self._log.debug("checkpoint_writing", round=checkpoint.round)
            started = time.monotonic()
            try:
                save_checkpoint(self.path, checkpoint)
            except BaseException as exc:  # re-raised by wait() in the job's thread
                self._error = exc
            else:
                self._last_seconds = time.monotonic() - started
                self.saved_round = checkpoint.round
                self._log.info(
                    "checkpoint_saved", round=checkpoint.round, seconds=round(self._last_seconds, 3)
                )

        self._thread = threading.Thread(target=run, name="checkpoint", daemon=True)
        self._thread.start()
        return True

    def wait(self) -> None:
        """Block until no write is in progress; raise the error of the last one, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
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
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises assorted types for truncated or foreign files
        raise ConfigError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {path} is not a fedsilo checkpoint of format {FORMAT_VERSION}"
        )
    if payload["identity"] != dict(identity):
        raise ConfigError(
            f"checkpoint {path} belongs to another job ({payload['identity']}); "
            f"this one is {dict(identity)}"
        )
    return Checkpoint(
        round=int(payload["round"]),
        global_state=dict(payload["global_state"]),
        strategy_state=dict(payload["strategy_state"]),
        pending_row=dict(payload["pending_row"]),
        identity=dict(payload["identity"]),
    )
