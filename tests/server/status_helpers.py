"""A job's shared state built by hand, for the status snapshot and the state metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import SERVER_CHUNKS, ModelFrames
from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.outbox import OutgoingModel
from fedsilo.server.registry import ClientRegistry, Stage, Work, WorkKind
from fedsilo.server.run_files import ClientIdLog
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.telemetry import JobTelemetry

CHUNK = 10
MODEL = {"w": torch.zeros(100, dtype=torch.uint8)}  # 100 bytes: 10 chunks of 10


@dataclass
class StillClock:
    """A progress clock that says the stream last moved ``idle`` seconds ago."""

    idle: float = 0.5

    def idle_seconds(self, uploading: bool) -> float:
        return self.idle


class QuietSession:
    """Stands in for a ClientSession: what the registry keeps of one, doing nothing."""

    def __init__(self, idle: float = 0.5) -> None:
        self.progress = StillClock(idle)

    def offer(self, event: Any, payload: Any) -> bool:
        return True

    def send(self, item: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def cut_off(self) -> None:
        pass

    def wait_ended(self, timeout: float) -> bool:
        return True


def model_stream() -> OutgoingModel:
    """A model stream of MODEL in chunks of CHUNK bytes: opening + 10 chunks + trailer."""
    frames = ModelFrames(
        list(MODEL.values()),
        CHUNK,
        SERVER_CHUNKS,
        lambda checksum: pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)),
    )
    return OutgoingModel(b"opening", frames)


def config(tmp_path: Path, **settings: Any) -> ServerConfig:
    """A job's config: job 3, five rounds, two clients at least."""
    return ServerConfig(
        job_id=3,
        insecure=True,
        rounds=5,
        min_clients=2,
        out=tmp_path / "run",
        **settings,
    )


def row(number: int, seconds: float, dropped: list[dict[str, Any]] | None = None) -> dict:
    """The training part of a metrics row, as metrics.round_row makes it."""
    return {
        "round": number,
        "time": "2026-01-01T00:00:00.000+00:00",
        "selected": [0, 1],
        "participants": [0, 1],
        "dropped": dropped or [],
        "train_loss": 0.5 / number,
        "train_examples": 160,
        "bytes_down": 1000,
        "bytes_up": 900,
        "seconds": seconds,
        "clients": [],
    }


def evaluated(training: dict, loss: float, accuracy: float) -> dict:
    """The row once its model was evaluated."""
    return {**training, "eval_loss": loss, "eval_accuracy": accuracy, "eval_examples": 40}


@dataclass
class Federation:
    """A JobState in round 2 of 5, with every kind of client, and its JobTelemetry."""

    state: JobState
    telemetry: JobTelemetry
    ids: dict[str, int]


def federation(tmp_path: Path, registry_class: type[ClientRegistry] = ClientRegistry) -> Federation:
    """Build the shared state of a job in its second round, by hand.

    downloading (3 of 12 frames), training, uploading (250 of 1000 bytes), idle after its
    update was folded, connected (still loading), dropped this round (disconnected while
    training), and one that only an earlier run knew (disconnected).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    id_log = ClientIdLog(tmp_path / "client_ids.jsonl")
    id_log.record("org-old", 0)  # admitted in an earlier run of this folder
    registry = registry_class(3, id_log)
    registry.restore_ids()
    state = JobState(registry=registry, phase=JobPhase.ROUND, rounds_completed=1)
    telemetry = JobTelemetry(CHUNK)
    ids: dict[str, int] = {}
    stages = {
        "org-down": Stage.DOWNLOAD,
        "org-train": Stage.TRAINING,
        "org-up": Stage.UPLOAD,
        "org-done": Stage.IDLE,
        "org-new": Stage.JOINED,
        "org-gone": Stage.TRAINING,
    }
    for name, stage in stages.items():
        member, _ = registry.admit(name, QuietSession(idle=0.25))
        ids[name] = member.client_id
        telemetry.admitted(member.client_id, name)
        member.move(stage)
        if stage is not Stage.IDLE and stage is not Stage.JOINED:
            member.work = Work(WorkKind.TRAIN, 2)
    selected = [ids[n] for n in ("org-down", "org-train", "org-up", "org-done", "org-gone")]
    fold = OrderedFold(selected, MODEL)
    current = Round(2, fold, dict(MODEL))
    state.round = current
    fold.submit(ids["org-done"], 10.0, {"w": torch.ones(100, dtype=torch.uint8)})
    registry.remove(ids["org-gone"], registry.get(ids["org-gone"]).session)  # type: ignore[union-attr]
    current.drop([ids["org-gone"]], "disconnected", {ids["org-gone"]: "training"})

    telemetry.download_started(ids["org-down"], model_stream())
    for _ in range(3):
        telemetry.frame_sent(ids["org-down"])
    telemetry.upload_started(ids["org-up"], 1000)
    telemetry.received(ids["org-up"], 250)
    telemetry.row_written(evaluated({"round": 0, "time": "t0"}, loss=0.69, accuracy=0.5))
    stalled = {
        "client_id": ids["org-new"],
        "reason": "stalled: no progress for 30s",
        "phase": "download",
        "after_seconds": 31.0,
    }
    telemetry.round_done(row(1, 2.0, [stalled]))
    return Federation(state, telemetry, ids)
