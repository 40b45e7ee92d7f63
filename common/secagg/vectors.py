"""A model's floating-point tensors as the flat vector secure aggregation sums, and back.

The vector is every floating-point tensor of the state dict, in the state dict's order,
flattened; integer and bool buffers (BatchNorm's num_batches_tracked) are not part of it.
Both sides walk the tensors a piece at a time, so nothing model-sized is ever copied.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from fedsilo.common.errors import SecAggRefusedError
from fedsilo.common.secagg.masks import DEFAULT_CHUNK_WORDS


def floating_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Return the names of the tensors that take part, in order."""
    return [name for name, tensor in state.items() if torch.is_floating_point(tensor)]


def vector_length(state: Mapping[str, torch.Tensor]) -> int:
    """Return the number of elements of the vector (RoundSetup.length)."""
    return sum(state[name].numel() for name in floating_names(state))


def delta_pieces(
    trained: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    piece: int = DEFAULT_CHUNK_WORDS,
) -> Iterator[NDArray[np.float64]]:
    """Yield ``trained - start`` over the floating tensors, at most ``piece`` elements at a time."""
    for name in floating_names(start):
        new = trained[name].detach().reshape(-1)
        old = start[name].detach().reshape(-1)
        for begin in range(0, old.numel(), piece):
            end = begin + piece
            delta = new[begin:end].to(torch.float64) - old[begin:end].to(torch.float64)
            yield delta.cpu().numpy()


def l2_norm(pieces: Iterable[NDArray[np.floating]]) -> float:
    """Return the L2 norm of a vector given in pieces (float64 accumulation)."""
    return math.sqrt(sum(float(np.dot(p, p)) for p in pieces))


def write_mean(
    chunks: Iterable[NDArray[np.floating]],
    start: Mapping[str, torch.Tensor],
    out: Mapping[str, torch.Tensor],
) -> None:
    """Write ``start + mean`` into ``out``'s floating tensors, reading the mean chunk by chunk."""
    if write_mean_at(chunks, start, out, 0) != vector_length(start):
        raise SecAggRefusedError("the mean is shorter than the model")


def write_mean_at(
    chunks: Iterable[NDArray[np.floating]],
    start: Mapping[str, torch.Tensor],
    out: Mapping[str, torch.Tensor],
    begin: int,
) -> int:
    """Write ``start + mean`` from vector position ``begin`` on; return the position after.

    Each element is ``float64(start) + mean`` in float64, then cast to ``out``'s dtype, through
    one reused float64 buffer (no temporaries per chunk); elements are independent, so disjoint
    ranges may be written by different threads.
    """
    names = [name for name in floating_names(start) if start[name].numel()]
    ends = list(itertools.accumulate(start[name].numel() for name in names))
    index = bisect.bisect_right(ends, begin)  # the tensor holding position ``begin``
    position = begin
    wide = torch.empty(0, dtype=torch.float64)
    for chunk in chunks:
        if len(chunk) > wide.numel():
            wide = torch.empty(len(chunk), dtype=torch.float64)
        mean = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float64))
        used = 0
        while used < len(chunk):
            if index == len(names):
                raise SecAggRefusedError("the mean is longer than the model")
            name = names[index]
            filled = position - (ends[index] - start[name].numel())
            flat_out, flat_start = out[name].view(-1), start[name].reshape(-1)
            count = min(len(chunk) - used, flat_out.numel() - filled)
            total = wide[:count]
            # float32 + float64 promotes to float64: the start widens exactly, as .to() would
            torch.add(flat_start[filled : filled + count], mean[used : used + count], out=total)
            flat_out[filled : filled + count].copy_(total)
            used += count
            position += count
            if position == ends[index]:
                index += 1
    return position
