"""Which ready clients take part in a round: all, a count, or a fraction, seeded per round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedsilo.common.seeding import derive_seed


def sample_clients(
    ready: Sequence[int],
    *,
    seed: int,
    round_number: int,
    count: int | None = None,
    fraction: float | None = None,
    minimum: int = 1,
    purpose: str = "train",
) -> list[int]:
    """Return the sorted ids chosen for a round from ``ready``.

    The draw depends only on (seed, round, the ready ids), so a resumed job or a simulation of
    the same config draws the same clients. At least ``minimum`` are drawn when there are that
    many, so that a round can always reach min_clients.
    """
    pool = sorted(ready)
    if count is None and fraction is None:
        return pool
    wanted = count if count is not None else math.ceil((fraction or 0.0) * len(pool))
    wanted = min(len(pool), max(wanted, minimum))
    generator = torch.Generator().manual_seed(derive_seed(seed, "sample", purpose, round_number))
    order = torch.randperm(len(pool), generator=generator)[:wanted]
    return sorted(pool[int(index)] for index in order)
