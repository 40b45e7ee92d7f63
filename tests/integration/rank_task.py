"""A task for ``fl-client --nproc-per-node`` tests: TinyTask, plus one rank that dies on cue.

``tests.integration.rank_task:RankTask`` with ``kill_rank = R`` and ``marker = PATH``: the first
time rank R trains (the marker file does not exist yet), it creates the marker and SIGKILLs
itself at its third forward pass, after two steps of DDP's all-reduce, so its peers are left
waiting in a collective. Every later round trains normally.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fedsilo.tasks import LocalData, TrainConfig, TrainResult
from tests.integration.user_task import TinyTask

KILL_AT_FORWARD = 3


class RankTask(TinyTask):
    """TinyTask whose rank ``kill_rank`` is killed mid-training once (``marker`` remembers)."""

    def __init__(
        self, features: int = 20, ballast_mb: float = 0, kill_rank: int = -1, marker: str = ""
    ) -> None:
        super().__init__(features, ballast_mb)
        self.kill_rank = int(kill_rank)
        self.marker = Path(marker) if marker else None

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        if (
            isinstance(model, DistributedDataParallel)
            and dist.get_rank() == self.kill_rank
            and self.marker is not None
            and not self.marker.exists()
        ):
            self.marker.touch()
            model.module.register_forward_hook(_killer())
        return super().train(model, data, config)


def _killer() -> Any:
    calls = 0

    def hook(*_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == KILL_AT_FORWARD:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
