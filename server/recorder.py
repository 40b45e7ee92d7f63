"""What a job leaves in its run folder: metrics rows, TensorBoard scalars, checkpoints, the model.

Row r of metrics.jsonl describes the model after round r; its evaluation arrives with round
r + 1's updates (or the final evaluation), so the recorder holds it as the pending row until
then, and the checkpoint carries it. Called by the coordinator thread only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
import torch

from fedsilo.server import metrics
from fedsilo.server.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointWriter, job_identity
from fedsilo.server.config import ServerConfig
from fedsilo.server.run_files import (
    FINISHED_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MetricsLog,
    mark_finished,
    save_model,
)
from fedsilo.server.telemetry import JobTelemetry
from fedsilo.server.tensorboard import TensorBoardSink


class JobRecorder:
    """Writes one job's files: rows as they complete, checkpoints in the background, model.pt."""

    def __init__(self, config: ServerConfig, log: structlog.typing.FilteringBoundLogger) -> None:
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.metrics_log = MetricsLog(self.run_dir / METRICS_FILE)
        self.model_path = self.run_dir / MODEL_FILE
        self.identity = job_identity(config)
        self._tensorboard = TensorBoardSink(self.run_dir) if config.tensorboard else None
        self.telemetry = JobTelemetry(config.chunk_size)  # Prometheus and the status page
        self._checkpoints = CheckpointWriter(self.run_dir / CHECKPOINT_FILE, log)
        self._pending_row: dict[str, Any] | None = metrics.initial_row()
        self._last_round_row: dict[str, Any] | None = None  # the newest checkpointable row
        # Noted by a session thread under the job's cond while the client still owes its
        # evaluation, so before the coordinator (which waits on that cond) writes the row.
        self._evaluation_errors: dict[int, str] = {}

    def begin_fresh(self) -> None:
        """Start a new job in this folder: an old metrics file is replaced."""
        (self.run_dir / FINISHED_FILE).unlink(missing_ok=True)
        if self.metrics_log.path.exists():
            self.log.warning("metrics_file_replaced", path=str(self.metrics_log.path))
            self.metrics_log.path.unlink()

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue after ``checkpoint``'s round: rows from that round on are written again."""
        self._pending_row = checkpoint.pending_row
        self._last_round_row = checkpoint.pending_row
        kept = self.metrics_log.truncate(before_round=checkpoint.round)
        self.telemetry.restore_rows(self.metrics_log.path)
        self._checkpoints.saved_round = checkpoint.round
        self.log.info("job_resumed", round=checkpoint.round, metrics_rows_kept=kept)

    def release_checkpoint(self) -> None:
        """Make sure no checkpoint write still reads the job's tensors (see CheckpointWriter)."""
        self._checkpoints.release()

    def annotate_pending(self, fields: Mapping[str, Any]) -> None:
        """Add fields to the row waiting for its evaluation (row 0: the initial model's)."""
        if self._pending_row is not None:
            self._pending_row = {**self._pending_row, **fields}

    def evaluation_failed(self, client_id: int, error: str) -> None:
        """Note why a client has no evaluation of the pending row's model (in its eval_clients)."""
        self._evaluation_errors[client_id] = error

    def write_row(self, evaluations: Sequence[metrics.ClientEvaluation]) -> None:
        """Complete the pending row with the evaluations of its model and append it."""
        if self._pending_row is None:
            return
        row = metrics.with_evaluation(self._pending_row, evaluations, self._evaluation_errors)
        self._pending_row = None
        self._evaluation_errors = {}
        self.metrics_log.append(row)
        if self._tensorboard is not None:
            self._tensorboard.append(row)
        self.telemetry.row_written(row)

    def round_done(self, row: dict[str, Any], checkpoint: Checkpoint, last: bool) -> None:
        """Hold a round's row until its evaluation; checkpoint it (always, for the ``last``)."""
        self._pending_row = row
        self._last_round_row = row
        self.telemetry.round_done(row)
        # Written in the background while the next round runs (see CheckpointWriter).
        self._checkpoints.offer(checkpoint, force=last)

    def pending_row(self) -> dict[str, Any] | None:
        """The row a checkpoint of the newest round carries."""
        return self._last_round_row

    def save_results(
        self,
        rounds_completed: int,
        checkpoint: Checkpoint | None,
        state: Mapping[str, torch.Tensor],
    ) -> None:
        """Write the newest round's checkpoint if it was skipped, then model.pt."""
        self._checkpoints.wait()
        if rounds_completed == 0:
            return
        if self._checkpoints.saved_round != rounds_completed and checkpoint is not None:
            self._checkpoints.offer(checkpoint, force=True)
            self._checkpoints.wait()
        save_model(state, self.model_path)

    def mark_finished(self, rounds_completed: int) -> None:
        """Record that the job is over (after its last row and model.pt are on disk)."""
        mark_finished(self.run_dir, rounds_completed)
