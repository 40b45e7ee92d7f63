"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning").

Every coordinate of the next global model is the median of the clients' values. For an even
count it is the mean of the two middle values (as ``torch.quantile(q=0.5)`` with linear
interpolation), not ``torch.median``'s lower middle value, so the rule is symmetric in sign.
It is the trimmed mean that drops all but the middle one or two values, and is computed by that
function. Needs every update of the round at once (memory O(model x clients)). Pure tensor
arithmetic: no I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedsilo.server.strategies.trimmed_mean import mean_of_middle

State = dict[str, torch.Tensor]


def coordinate_median(updates: Sequence[Mapping[str, torch.Tensor]]) -> State:
    """Return the coordinate-wise median of whole updates, in each tensor's own dtype.

    Computed in float32 (float64 for float64 and integer tensors); integer results are rounded
    half to even, so the median of int tensors [1, 2] is 2 and of [1, 4] is 2.
    """
    return mean_of_middle(updates, (len(updates) - 1) // 2)


class MedianOptions(BaseModel):
    """The median takes no options."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Median:
    """Coordinate-wise median over whole client models; keeps no state across rounds.

    Unweighted by design: ``weights`` (the example counts clients report) are ignored, because
    a weight is itself a claim a Byzantine client controls; weighting by it would let one
    client gain influence by claiming many examples. The rule is applied to models, not
    deltas: shifting every update by the global model shifts the median by the same amount.
    """

    name = "median"
    needs_all_updates: Literal[True] = True  # the job must collect every update of a round

    def combine(
        self,
        global_state: State,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: list[float],
    ) -> State:
        """Return the next global model: the coordinate-wise median, weights ignored."""
        if len(weights) != len(updates):
            raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
        return coordinate_median(updates)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state: there is none, so refuse a non-empty one."""
        if state:
            raise ValueError(f"median keeps no state, got {sorted(state)}")
