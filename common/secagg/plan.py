"""Who shares secrets with whom, and how many shares rebuild one: the round's neighbour graph.

Each client's self-mask seed and mask key are Shamir-shared among its *group*: its neighbours
and itself. The graph and the threshold ``t`` follow from public inputs only (the number of
clients selected, the ids that advertised keys, the round's seed, the job's threat model), so
every client derives the same plan as the server and a server cannot hand one a lower
threshold. Degree and threshold come from the number selected, fixed before anyone could drop;
the graph joins those that advertised keys (a full graph if they are too few for the degree).

The rule behind ``t`` (Bell et al., CCS 2020, semi-malicious server; Bonawitz et al., CCS 2017,
t > 2n/3 for the active model): an honest holder reveals at most one kind of share of a peer,
the owner reveals only its own self-mask share, corrupt holders reveal both. With k neighbours
and c of them corrupt, a server that lies about who dropped collects at most k + 1 + c shares of
one peer's two secrets together, so it cannot get t of each while 2t > k + 1 + c.

- **Full graph** (everyone is everyone's neighbour, k = n - 1): at most c = floor(gamma * n)
  corrupt clients, t = floor((n + c) / 2) + 1. Deterministic; a round completes while every
  needed secret has t answering holders (in the full graph: t clients left).
- **Sparse graph** (SecAgg+): a Harary graph H(n, k) (a ring, each node joined to the k/2
  nearest on either side) over the ids in a random order drawn from the round's seed. The
  smallest even k is chosen for which, with at most floor(gamma * n) corrupt clients and
  ceil(delta * n) dropouts placed at random, union bounds give (a) privacy: the graph of honest
  survivors stays connected and no group holds 2t - k - 1 corrupt members, except with
  probability 2^-security_bits; (b) correctness: every client keeps t live neighbours, except
  with probability 2^-correctness_bits (a corrupt client that stops answering is a dropout).
  The sparse graph is used only when that k is at most n / 4 (a four-fold saving): below, the
  full graph's deterministic guarantee and its tolerance of n - t dropouts are worth the cost.

Reference values of the same analysis (Google's open-source implementation of Bell et al.) are
quoted next to ours in docs/privacy.md.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.common.errors import SecAggError


class ThreatModel(BaseModel):
    """What a job assumes of its members: the fractions corrupt and dropping, the security bits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    corrupt_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="fraction of clients that may collude with the server"
    )
    dropout_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="fraction of clients expected to drop during a round"
    )
    security_bits: int = Field(40, ge=20, le=128, description="sparse graph: privacy 2^-bits")
    correctness_bits: int = Field(20, ge=10, le=64, description="sparse graph: failure 2^-bits")


class GraphKind(enum.Enum):
    """Whether every client shares with every other, or with its SecAgg+ neighbours only."""

    FULL = "full"
    SPARSE = "sparse"


@dataclass(frozen=True)
class Plan:
    """A round's graph: its clients, degree, threshold and each client's neighbours."""

    kind: GraphKind
    clients: tuple[int, ...]
    degree: int
    threshold: int
    neighbours: dict[int, frozenset[int]]

    def group(self, client: int) -> frozenset[int]:
        """Return the holders of ``client``'s shares: its neighbours and itself."""
        return self.neighbours[client] | {client}


def corrupt_count(n: int, threat: ThreatModel) -> int:
    """Return the most corrupt clients the threat model allows among ``n``."""
    return math.floor(threat.corrupt_fraction * n + 1e-9)


def full_threshold(n: int, threat: ThreatModel) -> int:
    """Return t for the full graph of ``n`` clients: the smallest t with 2t > n + c."""
    return (n + corrupt_count(n, threat)) // 2 + 1


@functools.lru_cache(maxsize=64)
def sparse_parameters(
    n: int, threat: ThreatModel, max_degree: int | None = None
) -> tuple[int, int] | None:
    """Return the smallest even degree k <= ``max_degree`` (< n - 1) meeting the bounds, and t.

    The bounds only get easier as k grows, so the smallest k is found by bisection; whatever
    the search, a returned (k, t) has been checked against every bound.
    """
    top = min(n - 2, n if max_degree is None else max_degree)
    top -= top % 2
    if top < 2 or _threshold_for(n, top, threat) is None:
        return None
    low, high = 0, top  # infeasible at low (or 0), feasible at high
    while high - low > 2:
        middle = (low + high) // 4 * 2
        if _threshold_for(n, middle, threat) is None:
            low = middle
        else:
            high = middle
    threshold = _threshold_for(n, high, threat)
    assert threshold is not None
    return high, threshold


def _threshold_for(n: int, k: int, threat: ThreatModel) -> int | None:
    """Return the smallest t meeting the privacy bound for degree k, if it meets correctness."""
    corrupt = corrupt_count(n, threat)
    dropouts = math.ceil(threat.dropout_fraction * n - 1e-9)
    privacy = -(threat.security_bits + 1) * math.log(2)  # split over the two bad events
    correctness = -threat.correctness_bits * math.log(2)
    if _log_disconnected(n, k, corrupt + dropouts) > privacy:
        return None
    corrupt_tail = _log_tails(n - 1, corrupt, k)  # corrupt neighbours of one client
    dropout_tail = _log_tails(n - 1, dropouts, k)  # dropped neighbours of one client
    for t in range(2, k + 1):
        if math.log(n) + corrupt_tail[max(2 * t - k - 1, 0)] > privacy:
            continue
        # A corrupt client that stops answering is a dropout: correctness counts dropouts.
        if math.log(n) + dropout_tail[k - t + 1] <= correctness:
            return t
        return None  # a larger t only needs more live holders
    return None


def _log_disconnected(n: int, k: int, bad: int) -> float:
    # Removing nodes splits H(n, k) only if two disjoint runs of k/2 ring neighbours are all
    # removed: n (n - k - 1) / 2 pairs of places, each all-bad with probability
    # C(bad, k) / C(n, k) when the order is random (a union bound).
    if bad < k:
        return -math.inf
    pairs = math.log(n) + math.log(max(n - k - 1, 1)) - math.log(2)
    return pairs + _log_comb(bad, k) - _log_comb(n, k)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_tails(population: int, marked: int, draws: int) -> list[float]:
    """Return log P[X >= m] for m = 0..draws + 1, X hypergeometric (marked among population)."""
    log_pmf = [-math.inf] * (draws + 1)
    for i in range(max(0, draws - (population - marked)), min(marked, draws) + 1):
        log_pmf[i] = (
            _log_comb(marked, i)
            + _log_comb(population - marked, draws - i)
            - _log_comb(population, draws)
        )
    tails = [-math.inf] * (draws + 2)
    for m in range(draws, -1, -1):
        tails[m] = _log_add(tails[m + 1], log_pmf[m])
    return tails


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def make_plan(clients: Sequence[int], selected: int, seed: bytes, threat: ThreatModel) -> Plan:
    """Derive the round's plan: graph over the ``clients`` that advertised keys, degree and
    threshold from the number ``selected`` (fixed before anyone could drop), order from ``seed``.
    """
    ids = tuple(sorted(set(clients)))
    if len(ids) != len(clients):
        raise SecAggError(f"client ids repeat in {sorted(clients)}")
    if selected < max(len(ids), 2):
        raise SecAggError(f"{selected} selected clients: at least 2, and all that advertised")
    # The sparse graph must cut the pairwise work at least four-fold to be worth trading the
    # full graph's deterministic guarantee and dropout tolerance for statistical ones.
    sparse = sparse_parameters(selected, threat, selected // 4)
    threshold = full_threshold(selected, threat) if sparse is None else sparse[1]
    if len(ids) < threshold:
        raise SecAggError(f"{len(ids)} clients advertised keys, {threshold} needed")
    if sparse is None or sparse[0] >= len(ids) - 1:
        everyone = frozenset(ids)
        neighbours = {client: everyone - {client} for client in ids}
        return Plan(GraphKind.FULL, ids, len(ids) - 1, threshold, neighbours)
    degree = sparse[0]
    ring = sorted(ids, key=lambda client: _rank(seed, client))
    neighbours = {}
    for position, client in enumerate(ring):
        offsets = range(1, degree // 2 + 1)
        neighbours[client] = frozenset(
            ring[(position + sign * offset) % len(ring)] for offset in offsets for sign in (1, -1)
        )
    return Plan(GraphKind.SPARSE, ids, degree, threshold, neighbours)


def _rank(seed: bytes, client: int) -> bytes:
    # Sorting by a keyed hash is a uniformly random order that any language can reproduce.
    return hashlib.sha256(seed + client.to_bytes(8, "big")).digest()
