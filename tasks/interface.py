"""The Task interface and the dataclasses it trades in: what a user's task implements.

A Task is any class with these four methods (no base class to inherit from)::

    class MyTask:
        def __init__(self, **options): ...            # options come from the job config
        def build_model(self, seed: int) -> torch.nn.Module: ...
        def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData: ...
        def train(self, model, data: LocalData, config: TrainConfig) -> TrainResult: ...
        def evaluate(self, model, data: LocalData) -> Evaluation: ...

The server calls only ``build_model`` (for the initial weights and the tensor specs every update
is checked against), and ``evaluate`` on its central set when the task offers one with the
optional ``central_data(data_dir) -> Dataset``; clients call all four. ``num_partitions()``, also
optional, tells fl-sim how many clients the task's data is split into.
``fedsilo.tasks.training`` has ready-made loops for classifiers. Select a task with
``--task synthetic`` (built in) or ``--task package.module:Name``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DpSgdConfig:
    """Record-level DP-SGD of one round (Opacus): noise multiplier, clipping norm, seed.

    ``seed=None`` (the default) draws Poisson sampling and noise from generators seeded by
    ``os.urandom``: the only private choice. An int makes the round reproducible, but whoever
    knows it (the coordinator, when it is the job's training seed) can recompute the noise and
    the batches, so a seeded round is not private against them: for research simulations only.
    """

    noise_multiplier: float
    max_grad_norm: float
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class DpSgdReport:
    """What DP-SGD did in one round: the input of the privacy accountant."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float  # Poisson sampling probability of each record per step
    steps: int  # noisy optimizer steps taken


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one client's local training in one round.

    The defaults are plain SGD. ``optimizer`` is "sgd" (with ``momentum``, ``nesterov`` and
    ``weight_decay`` as torch.optim.SGD takes them) or "adam" (torch.optim.Adam with
    ``weight_decay``). ``control_correction`` is SCAFFOLD's ``c - c_i`` (the server's control
    variate minus this client's) by state-dict name: after every optimizer step, each parameter
    moves by ``-learning_rate * correction`` (``fedsilo.tasks.training.ScaffoldCorrection``).
    """

    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    proximal_mu: float = 0.0  # FedProx (Li et al. 2020): 0 is plain local training
    privacy: DpSgdConfig | None = None  # record-level DP-SGD; None: plain training
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    control_correction: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class TrainResult:
    """What local training reports: examples seen per epoch (the update's weight) and mean loss.

    ``steps`` counts optimizer steps; ``privacy`` says what DP-SGD did, and must be set by a
    Task whose TrainConfig carried ``privacy`` (the client refuses a round without it).
    """

    examples: int
    loss: float
    steps: int = 0
    privacy: DpSgdReport | None = None


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on ``examples`` held-out examples, and named extras.

    ``metrics`` holds any other measurement of the same examples by name (``auroc``, ``f1``,
    ...: ``fedsilo.tasks.metrics``): finite numbers, at most 32, each name 1-64 characters of
    a-z 0-9 ``_ . -`` starting with a letter. The server averages each by example weight.
    """

    examples: int
    loss: float
    accuracy: float
    metrics: Mapping[str, float] = field(default_factory=dict)


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
