"""A task that only moves bytes, loaded by the daemons as ``bench.bench_task:NoopTask``.

The model is one float32 buffer of ``model_mib`` MiB (plus a 4x2 Linear, so that the model has
a parameter like any other); training and evaluation do nothing and touch neither, so a round
of this task measures the framework alone: transfer, bookkeeping, aggregation, checkpoints.
The daemons import it from the repository root (``PYTHONPATH`` = the root).

The payload is random: uniform in [-1, 1), drawn from a generator seeded with the job's seed
when the model is built (once per process: each daemon builds its model once), so every
process of a job holds the same bytes and every page of the model is really read and written.
A zero-filled model flatters every figure: untouched pages of zeros are the kernel's zero page,
and zeros compress in every layer that looks. ``payload = "zeros"`` keeps that case only as an
explicitly labelled comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult

MIB = 1 << 20
Payload = Literal["random", "zeros"]
PAYLOADS: tuple[Payload, ...] = ("random", "zeros")


def random_payload(elements: int, seed: int) -> torch.Tensor:
    """Return ``elements`` float32 values uniform in [-1, 1), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(elements, dtype=torch.float32).uniform_(-1.0, 1.0, generator=generator)


class NoopTask:
    """No-op training on a model of ``model_mib`` MiB of seeded random float32 (or zeros)."""

    def __init__(self, model_mib: float = 1.0, payload: str = "random") -> None:
        if model_mib < 0:
            raise ValueError(f"model_mib must be >= 0 (got {model_mib})")
        if payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {list(PAYLOADS)} (got {payload!r})")
        self.model_mib = float(model_mib)
        self.elements = int(self.model_mib * MIB) // 4
        self.payload: Payload = payload  # type: ignore[assignment]

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a 4x2 Linear carrying a ``payload`` buffer of ``model_mib`` MiB."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Linear(4, 2)
        if self.payload == "zeros":
            values = torch.zeros(self.elements)
        else:
            values = random_payload(self.elements, seed)
        model.register_buffer("payload", values)
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
