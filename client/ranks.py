"""``fl-client --nproc-per-node N``: each round's training on N local processes with torch DDP.

The client process keeps the session with the server (and its heartbeats, from their own
thread) and evaluates the received model as before; only the training step moves to N ranks
started for the round by torch's elastic launcher (``client/rank_launch.py``): gloo on the
CPU, nccl with one GPU per rank (cuda:0..N-1). The ranks build the task the client admitted,
load the received weights from a shared file (``client/rank_files.py``), train through the
task's own ``train`` with the model wrapped in ``DistributedDataParallel`` (the ready-made loop
gives each rank its share of every batch, ``tasks/training.py``), and rank 0's trained model
is copied back into the client's model: that is the update.

One launch per round: nothing outlives a round, so a rank that dies costs that round only.
The price is starting N interpreters per round (measured in docs/architecture.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import torch

from fedsilo.client.joined import Joined
from fedsilo.client.rank_files import (
    RESULT_FILE,
    ROUND_FILE,
    WEIGHTS_FILE,
    RankRound,
    RankTraining,
    SharedWeights,
    TensorEntry,
    entries_of,
    read_result,
    write_json,
)
from fedsilo.client.rank_launch import Log, launch
from fedsilo.common.errors import ConfigError, LocalTrainingError
from fedsilo.common.specs import specs_of
from fedsilo.tasks import TrainConfig, TrainResult

SHARED_MEMORY = Path("/dev/shm")
FOLDER_PREFIX = "fedsilo-ranks-"  # then the client's pid: a folder a dead client left is known
MAX_NPROC = 256


@dataclass(frozen=True)
class RankSettings:
    """How a round's ranks run: how many, on which kind of device, with how many threads."""

    nproc: int
    device: Literal["cpu", "cuda"]
    threads: int
    log_level: str = "info"

    @classmethod
    def resolve(
        cls, nproc: int, device: torch.device, threads: int | None, log_level: str = "info"
    ) -> RankSettings | None:
        """Return the settings for ``nproc`` ranks (None for 1: train in-process); ConfigError."""
        if not 1 <= nproc <= MAX_NPROC:
            raise ConfigError(f"nproc_per_node: {nproc} is not in 1..{MAX_NPROC}")
        if nproc == 1:
            return None
        if device.type == "cuda":
            if device.index is not None:
                raise ConfigError(
                    f"device: --nproc-per-node {nproc} puts rank i on cuda:i; give --device "
                    f"cuda (or auto), not {device}"
                )
            gpus = torch.cuda.device_count()
            if nproc > gpus:
                raise ConfigError(
                    f"nproc_per_node: {nproc} ranks need {nproc} GPUs (one each), this machine "
                    f"has {gpus}; use fewer, or --device cpu"
                )
        elif device.type != "cpu":
            raise ConfigError(f"device: --nproc-per-node runs on cpu or cuda, not {device.type}")
        per_rank = threads if threads is not None else max(1, (os.cpu_count() or 1) // nproc)
        kind: Literal["cpu", "cuda"] = "cuda" if device.type == "cuda" else "cpu"
        return cls(nproc, kind, per_rank, log_level)


class RankLauncher:
    """Trains a joined client's model for one round on N ranks; the update is rank 0's model."""

    def __init__(
        self,
        settings: RankSettings,
        name: str,
        data: Path | None,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.settings = settings
        self.name = name
        self.data = data
        self.log = log
        for base in (SHARED_MEMORY, Path(tempfile.gettempdir())):
            removed = sweep_stale_folders(base)
            if removed:
                log.info("stale_rank_folders_removed", folders=[str(p) for p in removed])

    def train(self, joined: Joined, round_number: int, config: TrainConfig) -> TrainResult:
        """Train ``joined.model`` in place on the ranks; LocalTrainingError if one fails."""
        if config.privacy is not None:
            raise ConfigError("DP-SGD is not supported across processes (--nproc-per-node)")
        model = joined.model
        state = model.state_dict()
        specs = specs_of(state)
        log = self.log.bind(
            job_id=joined.job.job_id, client_id=joined.client_id, round=round_number
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(
            prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=_folder_base(sum(s.nbytes for s in specs))
        ) as name:
            folder = Path(name)
            weights = SharedWeights.create(folder / WEIGHTS_FILE, specs)
            weights.store(state)
            spec = self._round(joined, round_number, config, entries_of(specs))
            write_json(folder / ROUND_FILE, spec)
            try:
                self._launch(folder, round_number, log)
                result = read_result(folder)
            except LocalTrainingError as exc:
                raise LocalTrainingError(str(exc), round_number) from exc
            weights.load_into(state)
        log.info("ranks_done", nproc=self.settings.nproc, seconds=time.monotonic() - started)
        return result.train_result()

    def _launch(self, folder: Path, round_number: int, log: Log) -> None:
        """Run the ranks; a failure after rank 0 wrote its result does not cost the round."""
        try:
            launch(self.settings.nproc, folder, f"round-{round_number}-{uuid.uuid4().hex}", log)
        except LocalTrainingError as exc:
            # result.json appears whole (a rename) after rank 0's training returned, and that
            # needed every rank in each all-reduce: the model is complete. What failed later
            # (a rank's exit, a peer's teardown) has no part in it.
            if not (folder / RESULT_FILE).exists():
                raise
            log.warning("ranks_failed_after_training", reason=str(exc))

    def _round(
        self, joined: Joined, number: int, config: TrainConfig, tensors: list[TensorEntry]
    ) -> RankRound:
        task_class = type(joined.task)
        return RankRound(
            task_class=f"{task_class.__module__}:{task_class.__qualname__}",
            task_name=joined.identity.name,
            options_json=joined.identity.options_json,
            model_seed=joined.job.seed,
            data_seed=joined.job.seed,
            partition=joined.partition,
            data_dir=str(self.data) if self.data is not None else None,
            training=RankTraining(
                local_epochs=config.local_epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=config.seed,
                proximal_mu=config.proximal_mu,
                optimizer=config.optimizer,
                momentum=config.momentum,
                nesterov=config.nesterov,
                weight_decay=config.weight_decay,
            ),
            tensors=tensors,
            device=self.settings.device,
            threads=self.settings.threads,
            sys_path=list(sys.path),
            log_level=self.settings.log_level,
            log_context={
                "client": self.name,
                "job_id": joined.job.job_id,
                "client_id": joined.client_id,
                "round": number,
            },
        )


def _folder_base(nbytes: int) -> Path | None:
    """Shared memory for the round's files when there is room, else the temporary folder."""
    try:
        if SHARED_MEMORY.is_dir() and shutil.disk_usage(SHARED_MEMORY).free > 2 * nbytes + (
            64 << 20
        ):
            return SHARED_MEMORY
    except OSError:
        pass
    return None


def sweep_stale_folders(base: Path) -> list[Path]:
    """Remove the round folders of clients that no longer run (killed); return them."""
    removed = []
    for path in sorted(base.glob(f"{FOLDER_PREFIX}*-*")):
        owner = path.name[len(FOLDER_PREFIX) :].split("-", 1)[0]
        try:
            ours = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if ours and owner.isdigit() and not _running(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
