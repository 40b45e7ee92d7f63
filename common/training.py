"""Ready-made local training and evaluation loops for classifiers, for Tasks to call.

Plain functions, deterministic from the seed in TrainConfig: shuffling uses its own
torch.Generator, never the global RNG.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

from fedsilo.common.task import Evaluation, TrainConfig, TrainResult


def train_classifier(
    model: torch.nn.Module, dataset: Dataset[Any], config: TrainConfig
) -> TrainResult:
    """Train with SGD and cross-entropy for ``config.local_epochs`` epochs; return mean loss."""
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    device = next(model.parameters()).device
    model.train()
    total_loss, batches = 0.0, 0
    for _ in range(config.local_epochs):
        for inputs, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(model(inputs.to(device)), labels.to(device))
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += float(loss.detach())
            batches += 1
    return TrainResult(examples=len(dataset), loss=total_loss / max(batches, 1))  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module, dataset: Dataset[Any], batch_size: int = 1024
) -> Evaluation:
    """Return mean cross-entropy and accuracy of ``model`` over ``dataset``."""
    device = next(model.parameters()).device
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for inputs, batch_labels in DataLoader(dataset, batch_size=batch_size):
        logits = model(inputs.to(device))
        labels = batch_labels.to(device)
        total_loss += float(functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    if count == 0:
        return Evaluation(examples=0, loss=0.0, accuracy=0.0)
    return Evaluation(examples=count, loss=total_loss / count, accuracy=correct / count)
