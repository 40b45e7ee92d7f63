"""Ready-made local training and evaluation loops for classifiers, for Tasks to call.

Plain functions, deterministic from the seed in TrainConfig: shuffling uses its own
torch.Generator, never the global RNG. With DP-SGD (``TrainConfig.privacy``) batches and noise
come from ``privacy.seed`` instead, secret unless the operator set one (``tasks/privacy.py``).

Given a ``DistributedDataParallel`` model (``fl-client --nproc-per-node N``), ``train_classifier``
runs the same steps across the ranks: every rank draws the same batches as one process would
(``global_batches``), computes its share of each (every N-th example) and scales its summed loss
so that DDP's gradient average is the whole batch's mean gradient. ``batch_size`` stays the
batch of the whole silo, so the result equals one process's training up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from fedsilo.tasks.interface import Evaluation, TrainConfig, TrainResult


def proximal_term(
    parameters: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """Return FedProx's ``(mu / 2) * ||w - w_global||^2`` over all ``parameters``."""
    squared = torch.zeros(())  # a 0-d CPU tensor adds to one on any device
    for p, a in zip(parameters, anchor, strict=True):
        squared = squared + (p - a).pow(2).sum()
    return (mu / 2) * squared


def train_classifier(
    model: torch.nn.Module, dataset: Dataset[Any], config: TrainConfig
) -> TrainResult:
    """Train with SGD and cross-entropy for ``config.local_epochs`` epochs; return mean loss.

    With ``config.proximal_mu > 0`` the objective adds FedProx's proximal term (Li et al. 2020,
    https://arxiv.org/abs/1812.06127) pulling the weights towards those training started from,
    the global model. The reported loss is the cross-entropy alone, comparable across mu.
    With ``config.privacy`` set, training is DP-SGD (``fedsilo.tasks.privacy.make_private``):
    Poisson-sampled batches of ``batch_size`` in expectation, ``ceil(examples / batch_size)``
    noisy steps per epoch, and the result's ``privacy`` says what was done.
    """
    # getattr: TrainConfig gains proximal_mu (default 0) in a separate change.
    mu = float(getattr(config, "proximal_mu", 0.0))
    if not mu >= 0:
        raise ValueError(f"proximal_mu must be >= 0, got {mu}")
    if isinstance(model, DistributedDataParallel):
        if getattr(config, "privacy", None) is not None:
            raise ValueError("DP-SGD is not supported across processes (--nproc-per-node)")
        return _train_ranks(model, dataset, config, mu)
    if getattr(config, "privacy", None) is not None:
        return _train_private(model, dataset, config, mu)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    parameters = list(model.parameters())
    anchor = [p.detach().clone() for p in parameters] if mu > 0 else []
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate)
    device = parameters[0].device
    model.train()
    total_loss, batches = 0.0, 0
    for _ in range(config.local_epochs):
        for inputs, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(model(inputs.to(device)), labels.to(device))
            objective = (loss + proximal_term(parameters, anchor, mu)) if anchor else loss
            objective.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += float(loss.detach())
            batches += 1
    return TrainResult(
        examples=len(dataset),  # type: ignore[arg-type]
        loss=total_loss / max(batches, 1),
        steps=batches,
    )


def global_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Yield one epoch's batches of indices, as a shuffled DataLoader with ``generator`` would."""
    # The same DataLoader over range(count) draws from the generator exactly as the loader over
    # the data does (a base seed, then the permutation), so the batches are the same.
    indices = cast("Dataset[int]", range(count))
    yield from DataLoader(
        indices, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=list
    )


def rank_share(batch: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """Return this rank's examples of a batch (every ``world``-th) and its loss scale.

    A rank whose share is empty (a batch smaller than the world) still takes part in DDP's
    all-reduce: it computes one example scaled by 0.
    """
    share = batch[rank::world]
    if not share:
        return batch[:1], 0.0
    return share, world / len(batch)


def _train_ranks(
    model: DistributedDataParallel, dataset: Dataset[Any], config: TrainConfig, mu: float
) -> TrainResult:
    """Train as train_classifier does, each DDP rank on its share of every batch."""
    group = model.process_group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    count = len(dataset)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(config.seed)
    parameters = list(model.parameters())
    anchor = [p.detach().clone() for p in parameters] if mu > 0 else []
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate)
    device = parameters[0].device
    model.train()  # type: ignore[no-untyped-call]
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    for _ in range(config.local_epochs):
        for batch in global_batches(count, config.batch_size, generator):
            share, scale = rank_share(batch, rank, world)
            inputs, labels = default_collate([dataset[i] for i in share])
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs.to(device))
            loss = functional.cross_entropy(logits, labels.to(device), reduction="sum")
            # DDP averages the ranks' gradients: world/len(batch) x the share's sum makes the
            # average the batch's mean gradient, however unevenly the batch splits.
            objective = loss * scale
            if anchor:
                objective = objective + proximal_term(parameters, anchor, mu)
            objective.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += loss.detach().double() * (scale / world)
            batches += 1
    dist.all_reduce(total_loss, group=group)  # the sum of every batch's mean loss
    return TrainResult(examples=count, loss=float(total_loss) / max(batches, 1), steps=batches)


def _add_proximal_gradient(
    parameters: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float
) -> None:
    """Add the gradient of proximal_term, ``mu * (w - w_global)``, to each parameter's grad."""
    for p, a in zip(parameters, anchor, strict=True):
        if p.grad is not None:
            p.grad.add_(p.detach() - a, alpha=mu)


def _train_private(
    model: torch.nn.Module, dataset: Dataset[Any], config: TrainConfig, mu: float
) -> TrainResult:
    """Train as train_classifier does, with DP-SGD: per-sample clipping, noise, Poisson batches."""
    from fedsilo.tasks.privacy import make_private

    assert config.privacy is not None
    parameters = list(model.parameters())
    anchor = [p.detach().clone() for p in parameters] if mu > 0 else []
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate)
    device = parameters[0].device
    loader = DataLoader(dataset, batch_size=config.batch_size)
    model.train()
    total_loss, batches = 0.0, 0
    with make_private(model, optimizer, loader, config.privacy) as private:
        for _ in range(config.local_epochs):
            for inputs, labels in private.loader:
                private.optimizer.zero_grad(set_to_none=True)
                count = len(labels)
                logits = model(inputs.to(device))
                # A Poisson batch may be empty: its mean is NaN, its sum 0 (the step still adds
                # noise and is counted by the accountant).
                loss = functional.cross_entropy(logits, labels.to(device), reduction="sum")
                (loss / max(count, 1)).backward()  # type: ignore[no-untyped-call]
                # The proximal gradient depends on no record: add it after clipping and noise.
                if private.optimizer.pre_step():
                    if anchor:
                        _add_proximal_gradient(parameters, anchor, mu)
                    private.optimizer.original_optimizer.step()
                if count:
                    total_loss += float(loss.detach()) / count
                    batches += 1
        report = private.report()
    return TrainResult(
        examples=len(dataset),  # type: ignore[arg-type]
        loss=total_loss / max(batches, 1),
        steps=report.steps,
        privacy=report,
    )


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
