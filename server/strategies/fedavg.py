"""FedAvg (McMahan et al. 2017): the next global model is the example-weighted mean of updates.

The mean is computed as a running weighted sum so that each update can be folded in and freed
as soon as it arrives (memory O(model), not O(model x clients)). Pure tensor arithmetic: no I/O,
no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedsilo.server.spill import tensor_blocks

State = dict[str, torch.Tensor]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype a weighted sum of ``dtype`` tensors is kept in."""
    if dtype in (torch.float64, torch.complex128, torch.complex64):
        return dtype
    if dtype.is_floating_point:
        return torch.float32  # float16/bfloat16 would lose the sum; float32 keeps memory at 1x
    return torch.float64  # integer buffers (e.g. BatchNorm counters): averaged, then rounded


def start_sum(update: Mapping[str, torch.Tensor], weight: float, owned: bool = False) -> State:
    """Return ``weight * update`` as a new weighted sum: the first update of a fold.

    With ``owned`` (the caller gives the update's tensors away), tensors already in their
    accumulator dtype are scaled in place and become the sum: no second model-sized buffer.
    """
    weighted_sum: State = {}
    for name in update:
        tensor = update[name]
        dtype = accumulator_dtype(tensor.dtype)
        if tensor.dtype != dtype:
            weighted_sum[name] = tensor.to(dtype).mul_(weight)
        else:
            weighted_sum[name] = tensor.mul_(weight) if owned else tensor.mul(weight)
    return weighted_sum


def fold(weighted_sum: State, update: Mapping[str, torch.Tensor], weight: float) -> None:
    """Add ``weight * update`` into ``weighted_sum`` in place, a block at a time.

    Blocks keep an update spilled to disk from being loaded whole; the arithmetic is
    elementwise, so the bits are those of one whole-tensor ``add_``.
    """
    for name, total in weighted_sum.items():
        flat = total.view(-1)
        for start, block in tensor_blocks(update, name):
            flat[start : start + block.numel()].add_(block.to(total.dtype), alpha=weight)


def weighted_mean(
    weighted_sum: State, total_weight: float, like: Mapping[str, torch.Tensor]
) -> State:
    """Divide the sum by the total weight (in place) and cast back to the model's dtypes."""
    if total_weight <= 0:
        raise ValueError("weighted mean of no updates")
    mean: State = {}
    for name, total in weighted_sum.items():
        value = total.div_(total_weight)
        target = like[name].dtype
        if not (target.is_floating_point or target.is_complex):
            value = value.round_()
        mean[name] = value.to(target)
    return mean


def aggregate(updates: list[Mapping[str, torch.Tensor]], weights: list[float]) -> State:
    """Return the weighted mean of whole updates (the reference the streaming fold must equal)."""
    if not updates:
        raise ValueError("aggregate of no updates")
    weighted_sum = start_sum(updates[0], weights[0])
    for update, weight in zip(updates[1:], weights[1:], strict=True):
        fold(weighted_sum, update, weight)
    return weighted_mean(weighted_sum, sum(weights), updates[0])


class FedAvgOptions(BaseModel):
    """FedAvg takes no options."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FedAvg:
    """FedAvg keeps no state across rounds: the new global model is the weighted mean."""

    name = "fedavg"
    needs_all_updates: Literal[False] = False  # updates are folded into a running sum

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model given the current one and the mean of client models."""
        return mean_update

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none for FedAvg)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state (FedAvg has none to restore)."""
