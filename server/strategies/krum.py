"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries").

Each update is scored by the sum of squared L2 distances (all tensors flattened together, in
float64) to its ``n - f - 2`` closest other updates; the ``multi`` lowest scores are selected,
ties going to the lower index. Krum (``multi=1``) returns the selected update itself; Multi-Krum
returns the unweighted mean of the selected ones. The guarantee needs ``n >= 2f + 3``. Needs
every update of the round at once (memory O(model x clients)), and O(n^2) distance work. Pure
tensor arithmetic: no I/O, no logging, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.server.strategies import fedavg
from fedsilo.server.strategies.trimmed_mean import check_updates

State = dict[str, torch.Tensor]


def pairwise_sq_distances(updates: Sequence[Mapping[str, torch.Tensor]]) -> list[list[float]]:
    """Return the n x n squared L2 distances between whole updates, computed in float64."""
    check_updates(updates)
    n = len(updates)
    parts: list[list[list[float]]] = [[[] for _ in range(n)] for _ in range(n)]
    for name, like in updates[0].items():
        wide = torch.complex128 if like.dtype.is_complex else torch.float64
        rows = [update[name].reshape(-1).to(wide) for update in updates]
        for i in range(n):
            for j in range(i + 1, n):
                diff = rows[i] - rows[j]
                if diff.is_complex():
                    diff = torch.view_as_real(diff)
                parts[i][j].append(float(diff.square().sum()))
    distances = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            # fsum is exactly rounded, so the per-tensor order of the parts cannot change bits.
            total = math.fsum(parts[i][j]) if not any(map(math.isnan, parts[i][j])) else math.inf
            distances[i][j] = distances[j][i] = total  # NaN never looks close: it counts as inf
    return distances


def krum_scores(updates: Sequence[Mapping[str, torch.Tensor]], byzantine: int) -> list[float]:
    """Return each update's Krum score: summed squared distance to its n - f - 2 nearest."""
    n = len(updates)
    if byzantine < 0:
        raise ValueError(f"byzantine must be >= 0, got {byzantine}")
    if n < 2 * byzantine + 3:
        raise ValueError(
            f"Krum needs n >= 2f + 3 updates: {n} updates cannot outvote f={byzantine} "
            f"Byzantine clients (need at least {2 * byzantine + 3})"
        )
    distances = pairwise_sq_distances(updates)
    nearest = n - byzantine - 2
    scores = []
    for i in range(n):
        others = sorted(distances[i][j] for j in range(n) if j != i)
        scores.append(math.fsum(others[:nearest]))
    return scores


def krum_select(
    updates: Sequence[Mapping[str, torch.Tensor]], byzantine: int, multi: int = 1
) -> list[int]:
    """Return the indices of the ``multi`` best-scored updates, best first, ties to lower index."""
    scores = krum_scores(updates, byzantine)  # checks n >= 2f + 3 first
    if not 1 <= multi <= len(updates) - byzantine:
        raise ValueError(
            f"multi must be in [1, n - f] = [1, {len(updates) - byzantine}], got {multi}"
        )
    return sorted(range(len(updates)), key=lambda i: (scores[i], i))[:multi]


def krum(updates: Sequence[Mapping[str, torch.Tensor]], byzantine: int, multi: int = 1) -> State:
    """Return the Krum choice (``multi=1``) or the unweighted mean of the Multi-Krum choices."""
    selected = krum_select(updates, byzantine, multi)
    if len(selected) == 1:
        chosen_one = updates[selected[0]]
        return {name: chosen_one[name].clone() for name in updates[0]}  # in update 0's order
    chosen = [updates[i] for i in sorted(selected)]  # index order: a canonical summation order
    return fedavg.aggregate(chosen, [1.0] * len(chosen))


class KrumOptions(BaseModel):
    """Krum's options (``strategy_options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    byzantine: int = Field(1, ge=0, description="f, the Byzantine clients to tolerate.")
    multi: int = Field(1, ge=1, description="Updates selected (1: Krum; more: Multi-Krum).")


class Krum:
    """Krum / Multi-Krum over whole client models; keeps no state across rounds.

    Unweighted by design: ``weights`` (the example counts clients report) are ignored, because
    a weight is itself a claim a Byzantine client controls; weighting by it would let one
    client gain influence by claiming many examples. Distances between models equal distances
    between deltas, so the rule is applied to models directly.
    """

    name = "krum"
    needs_all_updates: Literal[True] = True  # the job must collect every update of a round

    def __init__(self, byzantine: int = 1, multi: int = 1) -> None:
        options = KrumOptions(byzantine=byzantine, multi=multi)
        self.byzantine = options.byzantine
        self.multi = options.multi

    def combine(
        self,
        global_state: State,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: list[float],
    ) -> State:
        """Return the next global model chosen by (Multi-)Krum, weights ignored."""
        if len(weights) != len(updates):
            raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
        return krum(updates, self.byzantine, self.multi)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state to checkpoint (none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state: there is none, so refuse a non-empty one."""
        if state:
            raise ValueError(f"krum keeps no state, got {sorted(state)}")
