"""Tasks with their own training loops, for the client's DP-SGD tests."""

from __future__ import annotations

import torch
from torch.nn import functional
from torch.utils.data import DataLoader

from fedsilo.tasks.builtin.synthetic import SyntheticTask
from fedsilo.tasks.interface import LocalData, TrainConfig, TrainResult
from fedsilo.tasks.privacy import make_private


class OwnLoopTask(SyntheticTask):
    """The synthetic task trained by a loop of its own, with make_private as documented."""

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train with DP-SGD through make_private when the client asks for it."""
        assert config.privacy is not None, "these tests always run it with a DP policy"
        optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
        loader = DataLoader(data.train, batch_size=config.batch_size)
        with make_private(model, optimizer, loader, config.privacy) as private:
            for _ in range(config.local_epochs):
                for inputs, labels in private.loader:
                    private.optimizer.zero_grad()
                    loss = functional.cross_entropy(model(inputs), labels, reduction="sum")
                    (loss / max(len(labels), 1)).backward()
                    private.optimizer.step()
            report = private.report()
        return TrainResult(
            examples=data.train_examples, loss=0.0, steps=report.steps, privacy=report
        )


class NoDpTask(SyntheticTask):
    """The synthetic task trained without DP-SGD whatever the client asks."""

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train plainly, ignoring ``config.privacy``."""
        from dataclasses import replace

        return super().train(model, data, replace(config, privacy=None))
