"""Synthetic(alpha, beta): the federated data of the FedProx paper, with softmax regression.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks", section 5.1: client k draws
u_k ~ N(0, alpha) and B_k ~ N(0, beta); its labelling model W_k, b_k ~ N(u_k, 1) and its feature
mean v_k ~ N(B_k, 1); x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2; y = argmax(W_k x + b_k).
alpha sets how different the clients' models are, beta how different their data. Sample counts
follow the paper's power law (lognormal(4, 2) + 50), capped by ``max_samples``. Everything is
generated from (seed, partition): no files, no downloads.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.common.seeding import derive_seed
from fedsilo.tasks.interface import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier

FEATURES = 60
CLASSES = 10
TRAIN_FRACTION = 0.8


def generate_client_data(
    seed: int, partition: int, alpha: float, beta: float, max_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features, labels) of one Synthetic(alpha, beta) client."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "synthetic", partition))

    def normal(mean: float | torch.Tensor, std: float, *shape: int) -> torch.Tensor:
        return mean + std * torch.randn(*shape, generator=generator, dtype=torch.float64)

    samples = int(math.exp(4 + 2 * float(normal(0.0, 1.0, 1)))) + 50
    samples = min(samples, max_samples)
    model_mean = float(normal(0.0, alpha, 1))
    data_mean = float(normal(0.0, beta, 1))
    weights = normal(model_mean, 1.0, CLASSES, FEATURES)
    bias = normal(model_mean, 1.0, CLASSES)
    feature_mean = normal(data_mean, 1.0, FEATURES)
    std = torch.arange(1, FEATURES + 1, dtype=torch.float64).pow(-1.2).sqrt()
    features = feature_mean + std * torch.randn(
        samples, FEATURES, generator=generator, dtype=torch.float64
    )
    labels = (features @ weights.T + bias).argmax(dim=1)
    return features.float(), labels


class SyntheticTask:
    """Synthetic(alpha, beta) classification with a softmax-regression model."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, max_samples: int = 1000) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if max_samples < 10:
            raise ValueError("max_samples must be at least 10")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.max_samples = int(max_samples)

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a softmax-regression model (one linear layer) initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(FEATURES, CLASSES)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Generate partition ``partition``'s data; ``data_dir`` is not used."""
        features, labels = generate_client_data(
            seed, partition, self.alpha, self.beta, self.max_samples
        )
        cut = int(len(labels) * TRAIN_FRACTION)
        return LocalData(
            train=TensorDataset(features[:cut], labels[:cut]),
            test=TensorDataset(features[cut:], labels[cut:]),
        )

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train with SGD on the local split."""
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Evaluate on the held-out split."""
        return evaluate_classifier(model, data.test)
