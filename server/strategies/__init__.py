"""Aggregation strategies: one file per algorithm, pure functions plus state only where needed.

Two shapes, told apart by ``needs_all_updates``. A ``StreamingStrategy`` (False: the FedAvg
family) gets the example-weighted mean of the round's updates, folded as they arrive, through
``next_global(global_state, mean_update)``. A ``CollectingStrategy`` (True: the robust rules)
needs every update at once (memory O(model x clients)) and gets them through
``combine(global_state, updates, weights)``. Both keep ``state_dict``/``load_state_dict`` (what
a checkpoint keeps). Each strategy declares its options in one pydantic model (extra="forbid",
with bounds), checked when the config loads (``strategy_options_problem``) and again when the
strategy is built. A streaming strategy whose step needs each update's weight (FedNova, SCAFFOLD)
also implements ``RoundStep`` (``round_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import torch
from pydantic import BaseModel, ValidationError

from fedsilo.server.strategies.fedavg import FedAvg, FedAvgOptions
from fedsilo.server.strategies.fedavgm import FedAvgM, FedAvgMOptions
from fedsilo.server.strategies.fednova import FedNova, FedNovaOptions
from fedsilo.server.strategies.fedopt import (
    FedAdagrad,
    FedAdagradOptions,
    FedAdam,
    FedAdamOptions,
    FedYogi,
    FedYogiOptions,
)
from fedsilo.server.strategies.krum import Krum, KrumOptions
from fedsilo.server.strategies.median import Median, MedianOptions
from fedsilo.server.strategies.scaffold import Scaffold, ScaffoldOptions
from fedsilo.server.strategies.trimmed_mean import TrimmedMean, TrimmedMeanOptions

State = dict[str, torch.Tensor]


class StreamingStrategy(Protocol):
    """A strategy fed the running example-weighted mean of a round's updates."""

    @property
    def name(self) -> str:
        """The strategy's name in configs."""

    @property
    def needs_all_updates(self) -> Literal[False]:
        """False: the job folds updates into a running sum as they arrive."""

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model given the current one and the mean of client models."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state a checkpoint must keep."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state; raise ValueError on state it does not know."""


class CollectingStrategy(Protocol):
    """A strategy that needs every update of a round at once (robust aggregation)."""

    @property
    def name(self) -> str:
        """The strategy's name in configs."""

    @property
    def needs_all_updates(self) -> Literal[True]:
        """True: the job keeps every update of the round, in client-id order."""

    def combine(
        self,
        global_state: State,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: list[float],
    ) -> State:
        """Return the next global model from every update and its weight."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state a checkpoint must keep."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore checkpointed state; raise ValueError on state it does not know."""


Strategy: TypeAlias = StreamingStrategy | CollectingStrategy


@dataclass(frozen=True)
class StrategyEntry:
    """A strategy's options model and its class (built with the options as keywords)."""

    options: type[BaseModel]
    build: Callable[..., Strategy]


STRATEGIES: dict[str, StrategyEntry] = {
    "fedavg": StrategyEntry(FedAvgOptions, FedAvg),
    "median": StrategyEntry(MedianOptions, Median),
    "trimmed-mean": StrategyEntry(TrimmedMeanOptions, TrimmedMean),
    "krum": StrategyEntry(KrumOptions, Krum),
    "fedavgm": StrategyEntry(FedAvgMOptions, FedAvgM),
    "fedadam": StrategyEntry(FedAdamOptions, FedAdam),
    "fedyogi": StrategyEntry(FedYogiOptions, FedYogi),
    "fedadagrad": StrategyEntry(FedAdagradOptions, FedAdagrad),
    "scaffold": StrategyEntry(ScaffoldOptions, Scaffold),
    "fednova": StrategyEntry(FedNovaOptions, FedNova),
}


def unknown_strategy(name: str) -> str:
    """Return the line that refuses strategy ``name`` and lists the known ones."""
    return f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}"


def describe_options_error(name: str, options: type[BaseModel], exc: ValidationError) -> str:
    """Return one line naming each bad option of strategy ``name`` and the valid ones."""
    valid = ", ".join(sorted(options.model_fields)) or "none"
    problems = []
    for error in exc.errors():
        option = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"{name} has no option {option!r}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{option}: {message} (got {error.get('input')!r})")
    return f"{'; '.join(problems)}; valid options of {name}: {valid}"


def strategy_options_problem(name: str, options: Mapping[str, Any]) -> str | None:
    """Return why ``options`` do not fit strategy ``name`` (one line), or None when they do."""
    entry = STRATEGIES.get(name)
    if entry is None:
        return unknown_strategy(name)
    try:
        entry.options.model_validate(dict(options))
    except ValidationError as exc:
        return describe_options_error(name, entry.options, exc)
    return None


def make_strategy(name: str, options: Mapping[str, Any]) -> Strategy:
    """Build the strategy ``name`` with ``options``; raise ValueError naming what is wrong."""
    entry = STRATEGIES.get(name)
    if entry is None:
        raise ValueError(unknown_strategy(name))
    try:
        checked = entry.options.model_validate(dict(options))
    except ValidationError as exc:
        problem = describe_options_error(name, entry.options, exc)
        raise ValueError(f"strategy {name!r} rejected its options: {problem}") from None
    return entry.build(**checked.model_dump())
