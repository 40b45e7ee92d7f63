"""scikit-learn's 8x8 digits split among clients by label skew, with a one-hidden-layer MLP.

The same options as the ``fmnist`` task: ``clients`` (10) and ``partition`` ('dirichlet' with
``beta`` 0.5, 'iid', or 'labels' with ``labels`` k); each client keeps its first 80 % for
training and holds out the rest. The 1,797 images ship inside scikit-learn; nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.common.seeding import derive_seed
from fedsilo.tasks.datasets.digits import CLASSES, FEATURES, load_digits
from fedsilo.tasks.interface import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.models import MLP
from fedsilo.tasks.partition import LabelPartition
from fedsilo.tasks.training import evaluate_classifier, train_classifier

HIDDEN = (64,)


class DigitsTask:
    """Digits, partitioned by ``partition`` ('dirichlet', 'iid' or 'labels')."""

    def __init__(
        self,
        clients: int = 10,
        partition: str = "dirichlet",
        beta: float | None = None,
        labels: int | None = None,
    ) -> None:
        self.split = LabelPartition.from_options(clients, partition, beta, labels)

    def num_partitions(self) -> int:
        """Return the number of clients the data is split into."""
        return self.split.clients

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return an MLP (64 -> 64 -> 10) initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(FEATURES, HIDDEN, CLASSES)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Return client ``partition``'s digits; ``data_dir`` is not used."""
        features, labels = load_digits()
        train, test = self.split.client_split(labels, partition, derive_seed(seed, "digits"))

        def subset(indices: list[int]) -> TensorDataset:
            chosen = torch.tensor(indices, dtype=torch.int64)
            return TensorDataset(features[chosen], labels[chosen])

        return LocalData(train=subset(train), test=subset(test))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train with SGD on the local split."""
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Evaluate on the held-out split."""
        return evaluate_classifier(model, data.test)
