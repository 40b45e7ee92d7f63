"""The Task interface: the user's side of fedsilo, shared by the client daemon and simulations.

A Task is any class with these four methods (no base class to inherit from)::

    class MyTask:
        def __init__(self, **options): ...            # options come from the job config
        def build_model(self, seed: int) -> torch.nn.Module: ...
        def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData: ...
        def train(self, model, data: LocalData, config: TrainConfig) -> TrainResult: ...
        def evaluate(self, model, data: LocalData) -> Evaluation: ...

The server calls only ``build_model`` (for the initial weights and the tensor specs every update
is checked against); clients call all four. ``fedsilo.common.training`` has ready-made loops for
classifiers. Select a task with ``--task synthetic`` (built in) or ``--task package.module:Name``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from fedsilo.common.errors import TaskLoadError

BUILTIN_TASKS: dict[str, str] = {
    "synthetic": "fedsilo.common.tasks.synthetic:SyntheticTask",
    "shakespeare": "fedsilo.common.tasks.shakespeare:ShakespeareTask",
    "fmnist": "fedsilo.common.tasks.fmnist:FashionMnistTask",
    "digits": "fedsilo.common.tasks.digits:DigitsTask",
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one client's local training in one round."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    proximal_mu: float = 0.0  # FedProx (Li et al. 2020): 0 is plain local training


@dataclass(frozen=True)
class TrainResult:
    """What local training reports: examples seen per epoch (the update's weight) and mean loss."""

    examples: int
    loss: float


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on ``examples`` held-out examples."""

    examples: int
    loss: float
    accuracy: float


@dataclass(frozen=True)
class LocalData:
    """One client's data: a training split and a held-out split (labels as the last item)."""

    train: Dataset[Any]
    test: Dataset[Any]

    @property
    def train_examples(self) -> int:
        """Number of training examples."""
        return len(self.train)  # type: ignore[arg-type]

    @property
    def test_examples(self) -> int:
        """Number of held-out examples."""
        return len(self.test)  # type: ignore[arg-type]


@runtime_checkable
class Task(Protocol):
    """Builds the model, loads a client's data, trains one round and evaluates."""

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a freshly initialised model; the same seed must give the same weights."""

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Return the local data of ``partition``."""

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Train ``model`` in place on ``data.train``, deterministically from ``config.seed``."""

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """Evaluate ``model`` on ``data.test``."""


def resolve_task_class(spec: str) -> type[Any]:
    """Resolve a built-in task name or ``package.module:Name`` to a class."""
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskLoadError(
            f"task {spec!r} is neither a built-in task ({known}) nor 'package.module:Name'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskLoadError(f"task {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        task_class: type[Any] = getattr(module, attr)
    except AttributeError:
        raise TaskLoadError(f"task {spec!r}: module {module_name!r} has no {attr!r}") from None
    return task_class


def load_task(spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """Instantiate the task ``spec`` with ``options``; raise TaskLoadError with the reason."""
    task_class = resolve_task_class(spec)
    try:
        task = task_class(**dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise TaskLoadError(f"task {spec!r} rejected its options: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskLoadError(
            f"task {spec!r} lacks build_model, load_data, train or evaluate "
            "(see fedsilo.common.task)"
        )
    return task
