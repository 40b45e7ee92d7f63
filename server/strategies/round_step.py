"""What a strategy may need of a round beyond the mean of its updates: each update's weight.

FedNova and SCAFFOLD step from the example-weighted mean like FedAvg, but FedNova's step size
depends on every update's weight and normalizer, and SCAFFOLD's control-variate step on how
many clients took part. Such a strategy also implements ``RoundStep``; ``GlobalModel`` hands
it the round's contributions, in client-id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Contribution:
    """One folded update: its weight in the fold, and what its base weight was divided by.

    The base weight is the update's training examples (1 with uniform weighting); FedNova
    divides it by the client's normalizing factor ``a_i``, every other strategy by 1.
    """

    weight: float
    normalizer: float = 1.0


@runtime_checkable
class RoundStep(Protocol):
    """A streaming strategy whose step needs the round's contributions (FedNova, SCAFFOLD)."""

    def round_step(
        self,
        global_state: State,
        mean_update: Mapping[str, torch.Tensor],
        contributions: Sequence[Contribution],
    ) -> State:
        """Return the next global model from the fold's mean and each update's weight."""
