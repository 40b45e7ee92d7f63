"""Tasks that leave a marker file in the client's working directory when they do anything.

The hostile-coordinator tests pass only when none of these files appears: the client trained,
evaluated or imported nothing its policy did not allow.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier

TRAINED = "TRAINED"
EVALUATED = "EVALUATED"


class CanaryTask:
    """A two-class logistic regression whose training and evaluation leave a marker file."""

    def __init__(self, features: int = 3) -> None:
        self.features = features

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(self.features, 2)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        generator = torch.Generator().manual_seed(seed + partition)
        x = torch.randn(40, self.features, generator=generator)
        y = (x[:, 0] > 0).long()
        return LocalData(train=TensorDataset(x[:30], y[:30]), test=TensorDataset(x[30:], y[30:]))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        Path(TRAINED).touch()
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        Path(EVALUATED).touch()
        return evaluate_classifier(model, data.test)


class IntOptionTask(CanaryTask):
    """Fails unless its option arrives as an integer, as ``nn.Linear`` would."""

    def __init__(self, hidden: int = 4) -> None:
        if isinstance(hidden, bool) or not isinstance(hidden, int):
            raise TypeError(f"hidden must be an int, got {hidden!r}")
        super().__init__(features=hidden)


class SlowLoadingTask(CanaryTask):
    """A CanaryTask whose data takes ``load_seconds`` to load (a big dataset, a slow disk)."""

    def __init__(self, features: int = 3, load_seconds: float = 0.0) -> None:
        super().__init__(features)
        self.load_seconds = load_seconds

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        time.sleep(self.load_seconds)  # the slow load under test, not a wait for anything
        return super().load_data(partition, seed, data_dir)
