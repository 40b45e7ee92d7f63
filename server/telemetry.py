"""What one job counts as it runs: Prometheus metrics, live transfer progress, recent rows.

A ``JobTelemetry`` belongs to one job (its ``JobRecorder`` makes it) and has its own
``CollectorRegistry``, never prometheus_client's global default, so that every job in one
process (tests, fl-sim) counts apart. Sessions call its event methods, one line each, from
their reader and writer threads; the recorder hands it each metrics row. It guards its own
fields with one leaf lock, taken last and never held across a call into anything else (the
lock order of docs/architecture.md: session lock -> ``JobState.cond`` -> leaf locks).

What the job's shared state says (phase, members, the round) is read at scrape time by
``server/status_metrics.py``; only what happens and is gone (a refusal, a finished transfer,
a round's duration) is counted here.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from fedsilo.common.errors import ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import SERVER_CHUNKS
from fedsilo.server.outbox import OutgoingModel

# Without this every counter and histogram also exposes a `<name>_created` gauge family (a
# process-wide setting of prometheus_client): noise beside each series in the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

DIRECTIONS = ("down", "up")
HISTORY_ROUNDS = 10_000  # compact rows kept for the curves (a few hundred bytes each)
RECENT_ROWS = 5  # whole metrics rows kept for /status
ROUND_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
HISTORY_FIELDS = ("round", "train_loss", "eval_loss", "eval_accuracy", "seconds")

# Reasons a client leaves a round (server/coordinator.py, server/job.py, server/intake.py),
# matched on the start of the recorded reason: a bounded label set.
DROP_REASONS = (
    ("disconnected", "disconnected"),
    ("stalled", "stalled"),
    ("no update within round_timeout", "round_timeout"),
    ("update refused", "update_refused"),
    ("replaced by a new connection", "replaced"),
)
# Why an update was refused, matched on the words of the check that refused it
# (common/specs.py, common/tensor_stream.py, common/compression.py, server/validation.py,
# server/report_checks.py, server/intake.py); first match wins.
REFUSAL_REASONS = (
    ("checksum", "checksum"),
    ("is not a finite number", "metrics"),
    ("examples, more than", "metrics"),
    ("nan or infinite", "not_finite"),
    ("not finite", "not_finite"),
    ("norm", "norm_bound"),
    ("train_examples", "weight"),
    ("training examples", "weight"),
    ("header", "header"),
    ("does not match the model", "header"),
    ("the model has", "header"),
    ("chunk", "stream"),
    ("stream ended", "stream"),
    ("top-k", "compression"),
    ("int8", "compression"),
)


def drop_reason(reason: str) -> str:
    """Return the label of a recorded drop reason (one of a few words)."""
    return next((label for start, label in DROP_REASONS if reason.startswith(start)), "other")


def refusal_reason(refused: ProtocolError, late: bool) -> str:
    """Return the label of a refused update: late, wrong_round, or what was wrong with it."""
    if late:
        return "late"
    if refused.code == pb.WRONG_ROUND:
        return "wrong_round"
    text = refused.message.lower()
    return next((label for words, label in REFUSAL_REASONS if words in text), "other")


def model_frames(stream: OutgoingModel, chunk_size: int) -> int:
    """Return how many frames the writer sends for ``stream`` (opening, chunks, trailer)."""
    frames = stream.frames
    if frames.inline is not None:
        return 1
    chunk_bytes = frames.nbytes - len(frames.trailer)
    # Every chunk but the last is full, so the count is exact.
    return 2 + math.ceil(chunk_bytes / SERVER_CHUNKS.frame_size(chunk_size))


@dataclass
class Transfer:
    """A model going down to a client, or an update coming up, as far as it got."""

    direction: str  # "down" or "up"
    total: int  # frames (down) or tensor bytes (up)
    nbytes: int  # bytes of the whole transfer
    started: float
    done: int = 0

    @property
    def ratio(self) -> float:
        """How much of it has moved, 0..1."""
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


class JobTelemetry:
    """One job's event metrics, its clients' transfers in progress and its recent rows."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._names: dict[int, str] = {}
        self._bytes_up: dict[int, Counter] = {}  # each client's labelled counter, looked up once
        self._transfers: dict[tuple[int, str], Transfer] = {}  # (client id, direction)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_ROUNDS)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_ROWS)
        self._define_metrics()

    def _define_metrics(self) -> None:
        registry = self.registry
        self.round_seconds = Histogram(
            "fedsilo_round_duration_seconds",
            "Seconds from a round's start to its aggregated model.",
            buckets=ROUND_SECONDS_BUCKETS,
            registry=registry,
        )
        self.drops = Counter(
            "fedsilo_client_drops_total",
            "Clients dropped from a round, by reason and by what they were doing.",
            ["reason", "phase"],
            registry=registry,
        )
        self.refusals = Counter(
            "fedsilo_upload_refusals_total",
            "Updates the server did not take, by reason (late ones are only ignored).",
            ["reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "fedsilo_client_bytes_total",
            "Bytes exchanged with each client: up = every message received, "
            "down = model streams sent out whole.",
            ["client", "direction"],
            registry=registry,
        )
        self.throughput = Gauge(
            "fedsilo_client_throughput_bytes_per_second",
            "Speed of each client's last finished model transfer, by direction.",
            ["client", "direction"],
            registry=registry,
        )
        self.updates = Counter(
            "fedsilo_updates_aggregated_total",
            "Client updates that went into an aggregated model.",
            registry=registry,
        )
        self.train_examples = Counter(
            "fedsilo_train_examples_total",
            "Training examples behind the aggregated updates (the clients' declared weights).",
            registry=registry,
        )
        self.train_loss = Gauge(
            "fedsilo_train_loss",
            "Example-weighted training loss of the last completed round.",
            registry=registry,
        )
        self.eval_loss = Gauge(
            "fedsilo_eval_loss",
            "Example-weighted loss of the newest evaluated global model on the clients' data.",
            registry=registry,
        )
        self.eval_accuracy = Gauge(
            "fedsilo_eval_accuracy_ratio",
            "Example-weighted accuracy (0..1) of the newest evaluated global model.",
            registry=registry,
        )
        self.admissions = Counter(
            "fedsilo_client_admissions_total",
            "Hellos admitted (a client's first connection and every reconnection).",
            registry=registry,
        )
        self.protocol_errors = Counter(
            "fedsilo_protocol_errors_total",
            "Error messages the server sent to clients, by error code.",
            ["code"],
            registry=registry,
        )
        self.peer_errors = Counter(
            "fedsilo_client_reported_errors_total",
            "Error messages clients sent to the server, by error code.",
            ["code"],
            registry=registry,
        )
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU, fds
        GCCollector(registry=registry)

    # ------------------------------------------------------------------ session events

    def admitted(self, client_id: int | None, name: str | None) -> None:
        """A Hello was admitted: ``client_id`` is ``name`` from now on."""
        if client_id is None or name is None:
            return
        counter = self.bytes.labels(name, "up")
        with self._lock:
            self._names[client_id] = name
            self._bytes_up[client_id] = counter
            self._forget(client_id)
        self.admissions.inc()

    def received(self, client_id: int | None, nbytes: int) -> None:
        """A message of ``nbytes`` came from a client (its upload moves on, if one is open)."""
        if client_id is None:
            return
        with self._lock:
            counter = self._bytes_up.get(client_id)
            upload = self._transfers.get((client_id, "up"))
            if upload is not None:
                upload.done += nbytes
        if counter is not None:
            counter.inc(nbytes)

    def download_started(self, client_id: int | None, stream: OutgoingModel) -> None:
        """A model stream was queued for a client."""
        if client_id is None:
            return
        transfer = Transfer("down", model_frames(stream, self.chunk_size), stream.nbytes, 0.0)
        with self._lock:
            transfer.started = time.monotonic()
            self._transfers[(client_id, "down")] = transfer

    def frame_sent(self, client_id: int | None) -> None:
        """The writer put one frame on a client's stream."""
        if client_id is None:
            return
        with self._lock:
            download = self._transfers.get((client_id, "down"))
            if download is not None:
                download.done += 1

    def download_finished(self, client_id: int | None) -> None:
        """A whole model stream went out to a client."""
        self._finish(client_id, "down")

    def upload_started(self, client_id: int | None, total_bytes: int) -> None:
        """A client's SendModel opened an update of ``total_bytes`` tensor bytes."""
        if client_id is None:
            return
        with self._lock:
            self._transfers[(client_id, "up")] = Transfer("up", total_bytes, 0, time.monotonic())

    def upload_finished(self, client_id: int | None) -> None:
        """A client's update arrived whole (and was folded, or ignored as late)."""
        self._finish(client_id, "up")

    def upload_refused(self, client_id: int | None, refused: ProtocolError, late: bool) -> None:
        """An update was refused (or ignored, when ``late``)."""
        if client_id is not None:
            with self._lock:
                self._transfers.pop((client_id, "up"), None)
        self.refusals.labels(refusal_reason(refused, late)).inc()

    def disconnected(self, client_id: int | None) -> None:
        """A client's stream ended: whatever it was transferring stops."""
        if client_id is not None:
            with self._lock:
                self._forget(client_id)

    def _forget(self, client_id: int) -> None:
        """Drop the client's transfers (lock held)."""
        for direction in DIRECTIONS:
            self._transfers.pop((client_id, direction), None)

    def _finish(self, client_id: int | None, direction: str) -> None:
        """End the client's transfer in ``direction``: count its bytes (down), its speed."""
        if client_id is None:
            return
        with self._lock:
            transfer = self._transfers.pop((client_id, direction), None)
            name = self._names.get(client_id)
        if transfer is None or name is None:
            return
        if direction == "down":  # bytes up are counted as they arrive (``received``)
            self.bytes.labels(name, "down").inc(transfer.nbytes)
        nbytes = transfer.nbytes if direction == "down" else transfer.done
        seconds = time.monotonic() - transfer.started
        if seconds > 0 and nbytes > 0:
            self.throughput.labels(name, direction).set(nbytes / seconds)

    def protocol_error(self, code: int) -> None:
        """The server sent a client an Error."""
        self.protocol_errors.labels(_code_name(code)).inc()

    def peer_error(self, code: int) -> None:
        """A client sent the server an Error."""
        self.peer_errors.labels(_code_name(code)).inc()

    # ------------------------------------------------------------------ rows (recorder)

    def round_done(self, row: Mapping[str, Any]) -> None:
        """Count a finished round from its row (training part)."""
        self.round_seconds.observe(float(row["seconds"]))
        for drop in row["dropped"]:
            self.drops.labels(drop_reason(str(drop["reason"])), str(drop["phase"])).inc()
        self.updates.inc(len(row["participants"]))
        self.train_examples.inc(int(row["train_examples"]))
        if row["train_loss"] is not None:
            self.train_loss.set(float(row["train_loss"]))
        self._keep(row)

    def row_written(self, row: Mapping[str, Any]) -> None:
        """Take a completed row (with the evaluation of its model)."""
        if row.get("eval_loss") is not None:
            self.eval_loss.set(float(row["eval_loss"]))
        if row.get("eval_accuracy") is not None:
            self.eval_accuracy.set(float(row["eval_accuracy"]))
        self._keep(row)

    def restore_rows(self, path: Path) -> None:
        """Take the rows a resumed job kept in its metrics.jsonl (for the curves)."""
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(row, dict) and isinstance(row.get("round"), int):
                self._keep(row)

    def _keep(self, row: Mapping[str, Any]) -> None:
        compact = {name: row.get(name) for name in HISTORY_FIELDS}
        with self._lock:
            if self._history and self._history[-1]["round"] == compact["round"]:
                self._history[-1].update({k: v for k, v in compact.items() if v is not None})
            else:
                self._history.append(compact)
            if self._recent and self._recent[-1].get("round") == row.get("round"):
                self._recent[-1] = dict(row)
            else:
                self._recent.append(dict(row))

    # ------------------------------------------------------------------ reading

    def transfers(self) -> dict[tuple[int, str], Transfer]:
        """Return a copy of the transfers in progress, by (client id, direction)."""
        with self._lock:
            return {key: Transfer(**vars(t)) for key, t in self._transfers.items()}

    def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return (the compact history of every round kept, the last few whole rows)."""
        with self._lock:
            return [dict(row) for row in self._history], [dict(row) for row in self._recent]


def _code_name(code: int) -> str:
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return "UNKNOWN"
