"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning").

Per coordinate, the ``floor(trim_fraction * n)`` largest and as many smallest client values are
dropped and the rest averaged, unweighted. Needs every update of the round at once (memory
O(model x clients)). Pure tensor arithmetic: no I/O, no logging, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.server.strategies import fedavg

State = dict[str, torch.Tensor]


def check_updates(updates: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Raise ValueError unless there is an update and all name the same tensors."""
    if not updates:
        raise ValueError("robust aggregation of no updates")
    names = set(updates[0])
    for index, update in enumerate(updates[1:], start=1):
        if set(update) != names:
            raise ValueError(f"update {index} names other tensors than update 0")


def sorted_coordinates(
    updates: Sequence[Mapping[str, torch.Tensor]], name: str, dtype: torch.dtype
) -> torch.Tensor:
    """Return tensor ``name`` of every update stacked as ``dtype`` and sorted along the clients."""
    stacked = torch.stack([update[name].to(dtype) for update in updates])
    # Stable, so that equal values (0.0 and -0.0) always land in the same order: same bits.
    return stacked.sort(dim=0, stable=True).values


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype the order statistics of ``dtype`` tensors are computed in."""
    if dtype.is_complex:
        raise ValueError("complex tensors have no order: no median or trimmed mean")
    # float32 for float16/bfloat16/float32; float64 for float64 and for integer buffers, exact
    # up to 2**53 where float32 would corrupt counters above 2**24 (as fedavg does).
    return fedavg.accumulator_dtype(dtype)


def mean_of_middle(updates: Sequence[Mapping[str, torch.Tensor]], drop: int) -> State:
    """Drop the ``drop`` largest and smallest values of every coordinate; average the rest."""
    check_updates(updates)
    keep = len(updates) - 2 * drop
    if drop < 0 or keep < 1:
        raise ValueError(f"dropping {drop} from each end of {len(updates)} updates leaves none")
    result: State = {}
    for name, like in updates[0].items():
        ordered = sorted_coordinates(updates, name, compute_dtype(like.dtype))
        # A fixed-order loop, not .mean(dim=0): the summation order, hence the bits, is fixed.
        total = ordered[drop].clone()
        for row in ordered[drop + 1 : drop + keep]:
            total += row
        value = total / keep
        if not like.dtype.is_floating_point:
            value = value.round()  # half to even, as fedavg does for integer buffers
        result[name] = value.to(like.dtype)
    return result


def trim_count(clients: int, trim_fraction: float) -> int:
    """Return how many values to drop at each end: ``floor(trim_fraction * clients)``."""
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    # Fraction(str(...)) reads 0.29 as 29/100, so 0.29 of 100 drops 29 (float 0.29*100 < 29).
    return math.floor(Fraction(str(trim_fraction)) * clients)


def trimmed_mean(updates: Sequence[Mapping[str, torch.Tensor]], trim_fraction: float) -> State:
    """Return the coordinate-wise mean after trimming ``trim_fraction`` of values at each end."""
    return mean_of_middle(updates, trim_count(len(updates), trim_fraction))


class TrimmedMeanOptions(BaseModel):
    """The trimmed mean's options (``strategy_options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction of values dropped at each end, per coordinate."
    )


class TrimmedMean:
    """Coordinate-wise trimmed mean over whole client models; keeps no state across rounds.

    Unweighted by design: ``weights`` (the example counts clients report) are ignored, because
    a weight is itself a claim a Byzantine client controls; weighting by it would let one
    client gain influence by claiming many examples. The rule is applied to models, not
    deltas: shifting every update by the global model shifts the result by the same amount.
    """

    name = "trimmed-mean"
    needs_all_updates: Literal[True] = True  # the job must collect every update of a round

    def __init__(self, trim_fraction: float = 0.2) -> None:
        options = TrimmedMeanOptions(trim_fraction=trim_fraction)  # now, not at round 1
        self.trim_fraction = float(options.trim_fraction)

    def combine(
        self,
        global_state: State,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: list[float],
    ) -> State:
        """Return the next global model: the trimmed mean of the updates, weights ignored."""
        if len(weights) != len(updates):
            raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
        return trimmed_mean(updates, self.trim_fraction)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state: there is none, so refuse a non-empty one."""
        if state:
            raise ValueError(f"trimmed-mean keeps no state, got {sorted(state)}")
