"""Fashion-MNIST split among clients by label skew (NIID-Bench), with NIID-Bench's simple-cnn.

Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study": the 60,000
training images are split among ``clients`` (default: Dir(0.5) label skew); each client keeps
its first 80 % for training (``holdout`` sets the rest) and holds out the rest, so its test data
has its own label mix. The official 10,000-image test set is the server's central evaluation set
(``central_data``), as NIID-Bench evaluates the global model. ``metrics`` (comma-separated
names of ``fedsilo.tasks.metrics.CLASSIFIER_METRICS``, e.g. "auroc,f1") adds those to every
evaluation. ``subset`` keeps only the first that many images of each client's training and
held-out data and of the central set (smoke runs of the NIID-Bench configs; None: all). The
files come from Debian's ``dataset-fashion-mnist`` (see
``fedsilo.tasks.datasets.fmnist``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.common.seeding import derive_seed
from fedsilo.tasks.datasets.fmnist import CLASSES, DEFAULT_DIR, load_fashion_mnist
from fedsilo.tasks.interface import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.metrics import check_metric_names
from fedsilo.tasks.models import SimpleCNN
from fedsilo.tasks.partition import LabelPartition
from fedsilo.tasks.training import evaluate_classifier, train_classifier

_MAX_PIXEL = 255.0


class FashionMnistTask:
    """Fashion-MNIST, partitioned by ``partition`` ('dirichlet', 'iid' or 'labels')."""

    def __init__(
        self,
        clients: int = 10,
        partition: str = "dirichlet",
        beta: float | None = None,
        labels: int | None = None,
        holdout: float = 0.2,
        metrics: str = "",
        subset: int | None = None,
    ) -> None:
        self.split = LabelPartition.from_options(clients, partition, beta, labels)
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        self.holdout = float(holdout)
        self.metrics = check_metric_names([m.strip() for m in metrics.split(",") if m.strip()])
        if subset is not None and int(subset) < 1:
            raise ValueError(f"subset must be >= 1, got {subset}")
        self.subset = None if subset is None else int(subset)

    def num_partitions(self) -> int:
        """Return the number of clients the data is split into."""
        return self.split.clients

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return NIID-Bench's simple-cnn initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SimpleCNN(in_channels=1, classes=CLASSES)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Return client ``partition``'s images; ``data_dir`` may hold the four IDX files."""
        images, labels = load_fashion_mnist("train", data_dir or DEFAULT_DIR)
        train, test = self.split.client_split(
            labels, partition, derive_seed(seed, "fmnist"), train_fraction=1 - self.holdout
        )
        features = images.unsqueeze(1)  # (n, 1, 28, 28), scaled to [0, 1] per client below

        def subset(indices: list[int]) -> TensorDataset:
            chosen = torch.tensor(indices[: self.subset], dtype=torch.int64)
            return TensorDataset(features[chosen].float() / _MAX_PIXEL, labels[chosen])

        return LocalData(train=subset(train), test=subset(test))

    def central_data(self, data_dir: Path | None) -> TensorDataset:
        """Return the official 10,000-image test set, for the server's central evaluation."""
        images, labels = load_fashion_mnist("test", data_dir or DEFAULT_DIR)
        images, labels = images[: self.subset], labels[: self.subset]
        return TensorDataset(images.unsqueeze(1).float() / _MAX_PIXEL, labels)

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train with SGD on the local split."""
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Evaluate on the held-out split (the central set, on the server)."""
        return evaluate_classifier(model, data.test, metrics=self.metrics)
