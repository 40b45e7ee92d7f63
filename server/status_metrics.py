"""Prometheus gauges read from the job's state at scrape time: phase, round, clients, files.

A scrape copies the shared state the way GET /status does (``status.copy_state``: under
``JobState.cond``, released at once) and adds what the run folder says (checkpoint age, spill
files). Events (refusals, bytes, round durations) are counted in ``server/telemetry.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedsilo.server.checkpoint import CHECKPOINT_FILE
from fedsilo.server.job import SPILL_DIR
from fedsilo.server.registry import Stage
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.status import StateCopy, StatusView, copy_state
from fedsilo.server.telemetry import DIRECTIONS
from fedsilo.server.uploads import SPILL_SUFFIX


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class JobStateCollector(Collector):
    """Yields the gauges of one job's state; registered in that job's own registry."""

    def __init__(self, view: StatusView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the job's state now."""
        view = self.view
        copy = copy_state(view.state)
        info = GaugeMetricFamily(
            "fedsilo_job_info", "The job this server runs (always 1).", labels=["job", "task"]
        )
        info.add_metric([str(view.info.job_id), view.info.task], 1)
        yield info
        phase = GaugeMetricFamily(
            "fedsilo_job_phase",
            "1 for the phase the job is in, 0 for the others.",
            labels=["phase"],
        )
        for each in JobPhase:
            phase.add_metric([each.value], 1.0 if each is copy.phase else 0.0)
        yield phase
        yield _gauge("fedsilo_job_rounds", "Rounds the job is configured to run.", view.info.rounds)
        yield CounterMetricFamily(
            "fedsilo_rounds_completed",
            "Rounds whose aggregated model exists (a resumed job starts at its checkpoint).",
            value=copy.rounds_completed,
        )
        telemetry = view.telemetry
        yield _gauge(
            "fedsilo_job_start_time_seconds",
            "When this server started the job, in seconds since the Unix epoch.",
            telemetry.started_wall,
        )
        yield _gauge(
            "fedsilo_job_uptime_seconds",
            "Seconds since this server started the job.",
            time.monotonic() - telemetry.started,
        )
        yield from self._round(copy)
        yield from self._clients(copy)
        yield from self._files(view.config.run_dir)

    def _round(self, copy: StateCopy) -> Iterator[Metric]:
        current = copy.round
        yield _gauge(
            "fedsilo_round_number",
            "The round in progress (0 while none is).",
            current.number if current else 0,
        )
        yield _gauge(
            "fedsilo_round_elapsed_seconds",
            "Seconds since the round in progress started (0 while none is).",
            current.elapsed_seconds if current else 0.0,
        )
        yield _gauge(
            "fedsilo_round_selected_clients",
            "Clients selected for the round in progress.",
            len(current.selected) if current else 0,
        )
        yield _gauge(
            "fedsilo_round_outstanding_clients",
            "Selected clients of the round in progress whose update has not arrived.",
            len(current.outstanding) if current else 0,
        )
        yield _gauge(
            "fedsilo_round_dropped_clients",
            "Clients dropped from the round in progress so far.",
            len(current.dropped) if current else 0,
        )

    def _clients(self, copy: StateCopy) -> Iterator[Metric]:
        yield _gauge("fedsilo_clients_connected", "Clients with an open stream.", len(copy.members))
        yield _gauge(
            "fedsilo_clients_ready",
            "Connected clients idle and ready for work.",
            len(copy.available),
        )
        yield _gauge(
            "fedsilo_clients_known", "Client names this job has ever admitted.", len(copy.ids)
        )
        stages = GaugeMetricFamily(
            "fedsilo_clients_in_stage",
            "Connected clients by what they are doing.",
            labels=["stage"],
        )
        for stage in Stage:
            stages.add_metric([stage.value], sum(1 for m in copy.members if m.stage is stage))
        yield stages
        transfers = self.view.telemetry.transfers()
        progress = GaugeMetricFamily(
            "fedsilo_client_transfer_progress_ratio",
            "How far each client's model transfer in progress has got (0..1).",
            labels=["client", "direction"],
        )
        silent = GaugeMetricFamily(
            "fedsilo_client_last_progress_seconds",
            "Seconds since each connected client's stream last moved.",
            labels=["client"],
        )
        for member in copy.members:
            for direction in DIRECTIONS:
                transfer = transfers.get((member.client_id, direction))
                if transfer is not None:
                    progress.add_metric([member.name, direction], transfer.ratio)
            silent.add_metric([member.name], member.idle_seconds)
        yield progress
        yield silent

    def _files(self, run_dir: Path) -> Iterator[Metric]:
        checkpoint = run_dir / CHECKPOINT_FILE
        try:
            stat = checkpoint.stat()
        except OSError:
            stat = None
        if stat is not None:
            yield _gauge(
                "fedsilo_checkpoint_age_seconds",
                "Seconds since the job's checkpoint was last written.",
                max(0.0, time.time() - stat.st_mtime),
            )
            yield _gauge(
                "fedsilo_checkpoint_size_bytes", "Size of the job's checkpoint.", stat.st_size
            )
        sizes = [_size(path) for path in (run_dir / SPILL_DIR).glob(f"*{SPILL_SUFFIX}")]
        yield _gauge(
            "fedsilo_spill_bytes",
            "Bytes of updates waiting on disk for their turn to be folded.",
            sum(sizes),
        )
        yield _gauge("fedsilo_spill_files", "Updates waiting on disk to be folded.", len(sizes))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # folded and deleted between the listing and the stat


def register_state_metrics(view: StatusView) -> None:
    """Add the state gauges of ``view``'s job to that job's own registry (once per job)."""
    view.telemetry.registry.register(JobStateCollector(view))
