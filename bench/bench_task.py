"""A task that only moves bytes, loaded by the daemons as ``bench.bench_task:NoopTask``.

The model is one float32 buffer of ``model_mib`` MiB (plus a 4x2 Linear, so that the model has
a parameter like any other); training and evaluation do nothing and touch neither, so a round
of this task measures the framework alone: transfer, bookkeeping, aggregation, checkpoints.
The daemons import it from the repository root (``PYTHONPATH`` = the root).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult

MIB = 1 << 20


class NoopTask:
    """No-op training on a model of ``model_mib`` MiB of float32 zeros."""

    def __init__(self, model_mib: float = 1.0) -> None:
        if model_mib < 0:
            raise ValueError(f"model_mib must be >= 0 (got {model_mib})")
        self.model_mib = float(model_mib)
        self.elements = int(self.model_mib * MIB) // 4

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a 4x2 Linear carrying a zero ``payload`` buffer of ``model_mib`` MiB."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Linear(4, 2)
        model.register_buffer("payload", torch.zeros(self.elements))
        return model

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Return one training and one held-out example (nothing reads them)."""
        x, y = torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)
        return LocalData(train=TensorDataset(x, y), test=TensorDataset(x, y))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Do nothing: the update is the model received, with weight 1."""
        return TrainResult(examples=1, loss=0.0)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Report a fixed evaluation without looking at the model."""
        return Evaluation(examples=1, loss=0.0, accuracy=0.0)
