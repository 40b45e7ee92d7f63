"""A member's own task package as deploy/README.md's walk-through installs it: a folder copied
into ``task/`` (on the containers' PYTHONPATH) and named ``csv_task:CsvTask``. Each member's
data are its own files, ``train.csv`` and ``test.csv`` in ``--data`` (features..., label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier

FEATURES = 4


def read_csv(path: Path) -> TensorDataset:
    """Rows of ``features..., label`` as a dataset."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)
    return TensorDataset(torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, -1]).long())


def write_csv(path: Path, seed: int, rows: int) -> None:
    """Write ``rows`` separable examples (label: the first feature's sign), for tests."""
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.6f")


class CsvTask:
    """Logistic regression on the member's own CSV files."""

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(FEATURES, 2)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        if data_dir is None:
            raise ValueError("csv_task reads train.csv and test.csv from fl-client --data DIR")
        return LocalData(
            train=read_csv(data_dir / "train.csv"), test=read_csv(data_dir / "test.csv")
        )

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        return evaluate_classifier(model, data.test)
