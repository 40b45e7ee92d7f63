"""A tiny task that fails on purpose, loaded as ``tests.sim.failing_task:FailingTask``.

``fail`` says how client ``partition`` fails: ``load_data`` and ``train`` raise there (train in
its ``at_round``-th round), ``die`` kills the process hosting the client with
SIGKILL while it trains, as the kernel's OOM killer would. Every other client trains normally.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier


class FailingTask:
    """Logistic regression on a separable blob per partition; one partition fails."""

    def __init__(self, fail: str = "none", partition: int = -1, at_round: int = 1) -> None:
        if fail not in ("none", "load_data", "train", "die"):
            raise ValueError(f"fail: {fail!r} is not none, load_data, train or die")
        self.fail = fail
        self.partition = int(partition)
        self.at_round = int(at_round)
        self._partition = -1  # each client loads its own instance of the task
        self._rounds = 0

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(8, 2)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        if self.fail == "load_data" and partition == self.partition:
            raise FileNotFoundError(f"no data for partition {partition} in /nowhere")
        generator = torch.Generator().manual_seed(seed * 1000 + partition)
        x = torch.randn(60, 8, generator=generator)
        y = (x[:, 0] > 0).long()
        self._partition = partition
        return LocalData(train=TensorDataset(x[:48], y[:48]), test=TensorDataset(x[48:], y[48:]))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        self._rounds += 1
        if self._partition == self.partition and self._rounds == self.at_round:
            if self.fail == "train":
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x8 and 9x2)")
            if self.fail == "die":
                os.kill(os.getpid(), signal.SIGKILL)
        return train_classifier(model, data.train, config)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        return evaluate_classifier(model, data.test)
