"""A user's own task, loaded by the daemons as ``tests.integration.user_task:TinyTask``.

It is the README's example, written out: four methods, no base class, options from the config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier


class TinyTask:
    """Two-class logistic regression on a linearly separable blob per partition.

    ``ballast_mb`` adds an unused buffer of that many MiB to the model, so that tests can make
    transfers as long as they need without making training slow.
    """

    def __init__(self, features: int = 20, ballast_mb: float = 0) -> None:
        self.features = int(features)
        self.ballast = int(ballast_mb * (1 << 20)) // 4

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Linear(self.features, 2)
        if self.ballast:
            model.register_buffer("ballast", torch.zeros(self.ballast))
        return model

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        generator = torch.Generator().manual_seed(seed * 1000 + partition)
        x = torch.randn(100, self.features, generator=generator)
        y = (x[:, 0] > 0).long()
        return LocalData(train=TensorDataset(x[:80], y[:80]), test=TensorDataset(x[80:], y[80:]))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        return evaluate_classifier(model, data.test)


class CentralTinyTask(TinyTask):
    """TinyTask with a server-side evaluation set: one more blob the clients never see."""

    def central_data(self, data_dir: Path | None) -> TensorDataset:
        generator = torch.Generator().manual_seed(987654)
        x = torch.randn(200, self.features, generator=generator)
        return TensorDataset(x, (x[:, 0] > 0).long())


class AurocTinyTask(CentralTinyTask):
    """CentralTinyTask whose evaluations add named metrics: AUROC and sensitivity."""

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        return evaluate_classifier(model, data.test, metrics=("auroc", "sensitivity"))
