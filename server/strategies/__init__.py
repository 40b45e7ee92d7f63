"""Aggregation strategies: one file per algorithm, pure functions plus state only where needed.

Every strategy has ``name``, ``needs_all_updates`` and ``state_dict``/``load_state_dict`` (what a
checkpoint keeps). Streaming strategies (``needs_all_updates = False``, the FedAvg family) get the
example-weighted mean of the round's updates, folded as they arrive, and implement
``next_global(global_state, mean_update)``. Robust strategies need every update at once (memory
O(model x clients)) and implement ``combine(global_state, updates, weights)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

State = dict[str, torch.Tensor]


class Strategy(Protocol):
    """What the job needs of any strategy."""

    name: str
    needs_all_updates: bool

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state a checkpoint must keep."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state."""


def _fedavg(**options: Any) -> Strategy:
    from fedsilo.server.strategies.fedavg import FedAvg

    return FedAvg(**options)


def _median(**options: Any) -> Strategy:
    from fedsilo.server.strategies.median import Median

    return Median(**options)


def _trimmed_mean(**options: Any) -> Strategy:
    from fedsilo.server.strategies.trimmed_mean import TrimmedMean

    return TrimmedMean(**options)


def _krum(**options: Any) -> Strategy:
    from fedsilo.server.strategies.krum import Krum

    return Krum(**options)


def _fedavgm(**options: Any) -> Strategy:
    from fedsilo.server.strategies.fedavgm import FedAvgM

    return FedAvgM(**options)


def _fedadam(**options: Any) -> Strategy:
    from fedsilo.server.strategies.fedopt import FedAdam

    return FedAdam(**options)


def _fedyogi(**options: Any) -> Strategy:
    from fedsilo.server.strategies.fedopt import FedYogi

    return FedYogi(**options)


def _fedadagrad(**options: Any) -> Strategy:
    from fedsilo.server.strategies.fedopt import FedAdagrad

    return FedAdagrad(**options)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": _fedavg,
    "median": _median,
    "trimmed-mean": _trimmed_mean,
    "krum": _krum,
    "fedavgm": _fedavgm,
    "fedadam": _fedadam,
    "fedyogi": _fedyogi,
    "fedadagrad": _fedadagrad,
}


def make_strategy(name: str, options: Mapping[str, Any]) -> Strategy:
    """Build the strategy ``name`` with ``options``; raise ValueError naming what is wrong."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}"
        ) from None
    try:
        return factory(**dict(options))
    except TypeError as exc:
        raise ValueError(f"strategy {name!r} rejected its options: {exc}") from exc
