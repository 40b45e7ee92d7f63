"""A member's task that fails the way a real one does, where its own ``--data`` folder says.

Every member runs the same task (``tests.integration.failing_task:DataTask``) with the same
options; what differs is the data. The folder's ``fail`` file names the step that breaks:

    load       load_data cannot find ``rows.csv`` (FileNotFoundError)
    train      the training rows have 5 columns, the model 3 inputs (a shape mismatch in torch)
    evaluate   the final model's evaluation fails (the task's second evaluate call; one round)

A folder without ``fail`` is a healthy member.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier

FEATURES = 3


class DataTask:
    """Two-class logistic regression whose data folder can make it fail in one step."""

    def __init__(self) -> None:
        self.fail: str | None = None
        self.evaluations = 0

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(FEATURES, 2)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        marker = data_dir / "fail" if data_dir is not None else None
        self.fail = marker.read_text().strip() if marker and marker.exists() else None
        if self.fail == "load":
            raise FileNotFoundError(f"no such file: {data_dir / 'rows.csv'}")
        generator = torch.Generator().manual_seed(seed + partition)
        width = 5 if self.fail == "train" else FEATURES
        x = torch.randn(40, width, generator=generator)
        y = (x[:, 0] > 0).long()
        # Evaluation always sees the right width, so that a "train" member fails in training.
        test = TensorDataset(x[30:, :FEATURES], y[30:])
        return LocalData(train=TensorDataset(x[:30], y[:30]), test=test)

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        self.evaluations += 1
        if self.fail == "evaluate" and self.evaluations == 2:
            raise ValueError("labels out of range: found class 7, the model has 2")
        return evaluate_classifier(model, data.test)
