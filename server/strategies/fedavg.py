"""FedAvg (McMahan et al. 2017): the next global model is the example-weighted mean of updates.

The mean is computed as a running weighted sum so that each update can be folded in and freed
as soon as it arrives (memory O(model), not O(model x clients)). Pure tensor arithmetic: no I/O,
no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

State = dict[str, torch.Tensor]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype a weighted sum of ``dtype`` tensors is kept in."""
    if dtype in (torch.float64, torch.complex128, torch.complex64):
        return dtype
    if dtype.is_floating_point:
        return torch.float32  # float16/bfloat16 would lose the sum; float32 keeps memory at 1x
    return torch.float64  # integer buffers (e.g. BatchNorm counters): averaged, then rounded


def new_sum(like: Mapping[str, torch.Tensor]) -> State:
    """Return a zeroed weighted-sum accumulator shaped like the model."""
    return {
        name: torch.zeros(t.shape, dtype=accumulator_dtype(t.dtype)) for name, t in like.items()
    }


def fold(weighted_sum: State, update: Mapping[str, torch.Tensor], weight: float) -> None:
    """Add ``weight * update`` into ``weighted_sum`` in place."""
    for name, total in weighted_sum.items():
        total.add_(update[name].to(total.dtype), alpha=weight)


def weighted_mean(
    weighted_sum: Mapping[str, torch.Tensor], total_weight: float, like: Mapping[str, torch.Tensor]
) -> State:
    """Divide the sum by the total weight and cast back to the model's dtypes."""
    if total_weight <= 0:
        raise ValueError("weighted mean of no updates")
    mean: State = {}
    for name, total in weighted_sum.items():
        value = total / total_weight
        target = like[name].dtype
        if not (target.is_floating_point or target.is_complex):
            value = value.round()
        mean[name] = value.to(target)
    return mean


def aggregate(updates: list[Mapping[str, torch.Tensor]], weights: list[float]) -> State:
    """Return the weighted mean of whole updates (the reference the streaming fold must equal)."""
    if not updates:
        raise ValueError("aggregate of no updates")
    weighted_sum = new_sum(updates[0])
    for update, weight in zip(updates, weights, strict=True):
        fold(weighted_sum, update, weight)
    return weighted_mean(weighted_sum, sum(weights), updates[0])


class FedAvg:
    """FedAvg keeps no state across rounds: the new global model is the weighted mean."""

    name = "fedavg"
    needs_all_updates = False  # updates are folded into a running sum as they arrive

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model given the current one and the mean of client models."""
        return mean_update

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none for FedAvg)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state (FedAvg has none to restore)."""
