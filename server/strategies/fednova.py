"""FedNova (Wang et al. 2020, https://arxiv.org/abs/2007.07481): normalized averaging.

Client i runs ``tau_i`` local SGD steps with momentum ``rho`` from the global model ``x`` to
``y_i``. Its normalized update is ``d_i = (x - y_i) / a_i`` with ``a_i = ||a_i||_1``, the sum
of the coefficients its steps put on their gradients (Wang et al., Eq. 8)::

    a_i = sum_{k=1..tau_i} (1 - rho^k) / (1 - rho)
        = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)

(``a_i = tau_i`` without momentum). With ``p_i = n_i / n`` the server steps
``x' = x - tau_eff * sum_i p_i d_i`` with ``tau_eff = sum_i p_i a_i``. This is NIID-Bench's and
Flower's FedNova; like theirs, ``a_i`` leaves out weight decay and the proximal term.

Folded as it streams: the intake gives update i the weight ``w_i = n_i / a_i`` (``n_i``: its
examples, or 1 with uniform weighting), so the fold's mean is ``m = sum_i w_i y_i / W`` with
``W = sum_i w_i``, and ``sum_i p_i d_i = (W / n) (x - m)``. So ``x' = x + s (m - x)`` with
``s = tau_eff W / n``. Each client reports its ``tau_i`` (``LocalMetrics.local_steps``), bounded
by ``local_epochs * ceil(examples / batch_size)`` (``LocalSteps``): a client claiming more steps
than its data allow would inflate ``tau_eff`` and everyone's step. Pure tensor arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from fedsilo.server.strategies.fedopt import compute_dtype
from fedsilo.server.strategies.round_step import Contribution

State = dict[str, torch.Tensor]


def normalizing_factor(steps: int, momentum: float) -> float:
    """Return ``a_i``, the L1 norm of the gradient coefficients of ``steps`` momentum steps."""
    if steps < 1:
        raise ValueError(f"FedNova needs at least one local step, got {steps}")
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


@dataclass(frozen=True)
class LocalSteps:
    """The job's local training, for checking and normalizing reported step counts."""

    local_epochs: int
    batch_size: int
    momentum: float

    def most(self, examples: int) -> int:
        """The most steps ``examples`` training examples allow: one per batch per epoch."""
        return self.local_epochs * max(1, math.ceil(examples / self.batch_size))

    def problem(self, steps: int, examples: int) -> str | None:
        """Say why ``steps`` is not a step count these examples allow, or None."""
        most = self.most(examples)
        if not 1 <= steps <= most:
            return (
                f"local_steps {steps} not in 1..{most} ({self.local_epochs} epochs of "
                f"{examples} examples in batches of {self.batch_size})"
            )
        return None

    def factor(self, steps: int) -> float:
        """Return the update's normalizing factor ``a_i``."""
        return normalizing_factor(steps, self.momentum)


class LocalTraining(Protocol):
    """What ``local_steps`` reads of a job's settings (a JobSpec)."""

    @property
    def strategy(self) -> str:
        """The job's strategy."""

    @property
    def local_epochs(self) -> int:
        """Local epochs per round."""

    @property
    def batch_size(self) -> int:
        """Local batch size."""

    @property
    def momentum(self) -> float:
        """Local SGD momentum."""


def local_steps(config: LocalTraining) -> LocalSteps | None:
    """Return the job's step checks when its strategy is FedNova."""
    if config.strategy != "fednova":
        return None
    return LocalSteps(config.local_epochs, config.batch_size, config.momentum)


def step_scale(contributions: Sequence[Contribution]) -> float:
    """Return ``s = tau_eff * W / n`` from each update's fold weight ``w_i`` and ``a_i``.

    ``n_i = w_i a_i``, so ``n = sum w_i a_i``, ``tau_eff = sum n_i a_i / n`` and
    ``W = sum w_i``: ``s = (sum w_i a_i^2) (sum w_i) / (sum w_i a_i)^2``.
    """
    if not contributions:
        raise ValueError("FedNova's step of no updates")
    total = sum(c.weight * c.normalizer for c in contributions)
    second = sum(c.weight * c.normalizer**2 for c in contributions)
    weights = sum(c.weight for c in contributions)
    return second * weights / (total * total)


def normalized_step(
    global_state: Mapping[str, torch.Tensor], mean_update: Mapping[str, torch.Tensor], scale: float
) -> State:
    """Return ``x + scale * (m - x)`` for floating tensors; the others take the mean's value."""
    out: State = {}
    for name, current in global_state.items():
        if not current.is_floating_point():
            out[name] = mean_update[name]
            continue
        dtype = compute_dtype(current.dtype)
        x = current.to(dtype)
        out[name] = (x + scale * (mean_update[name].to(dtype) - x)).to(current.dtype)
    return out


class FedNovaOptions(BaseModel):
    """FedNova takes no options: momentum and steps come from the job and the clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FedNova:
    """FedNova keeps no state across rounds; its step needs each update's normalizer."""

    name = "fednova"
    needs_all_updates: Literal[False] = False  # the normalized weights are folded as they stream

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the step when every update had the same normalizer (then s = 1: FedAvg)."""
        return normalized_step(global_state, mean_update, 1.0)

    def round_step(
        self,
        global_state: State,
        mean_update: Mapping[str, torch.Tensor],
        contributions: Sequence[Contribution],
    ) -> State:
        """Return ``x + s (m - x)``, s from the round's weights and normalizers."""
        return normalized_step(global_state, mean_update, step_scale(contributions))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none for FedNova)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state (FedNova has none; anything else is refused)."""
        if state:
            raise ValueError(f"FedNova keeps no state, got {sorted(state)}")
