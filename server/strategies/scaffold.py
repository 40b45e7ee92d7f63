"""SCAFFOLD (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378), option II.

The server keeps a control variate ``c`` (one tensor per floating-point tensor of the model,
zero at first) and sends it with every round's model; client i corrects each local step by
``c - c_i`` and sends, besides its trained model ``y_i``, the change ``dc_i = c_i+ - c_i`` of its
own variate (``client/control_variates.py``). The update stream carries them as declared extra
tensors (``<name>#dc``, ``common/control_variates.py``), folded with the model's into the same
example-weighted mean, so after a round the fold holds ``mean(y)`` and ``mean(dc)``::

    x' = x + server_learning_rate * (mean(y) - x)
    c' = c + (|S| / N) * mean(dc)

``|S|`` is the number of updates folded, ``N`` the ``population`` (default: ``|S|``, i.e. every
client takes part in every round, NIID-Bench's setting). As Flower's NIID-Bench reproduction
(the reference table) does, both means weigh clients by their examples; Karimireddy et al.
average ``dc`` uniformly (``--weighting uniform`` gives that, for the model too). ``c`` is the
strategy's state, so a checkpoint keeps it and a resumed job sends the same ``c`` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.common.control_variates import DELTA_SUFFIX
from fedsilo.server.strategies.fedopt import ServerBuffers, compute_dtype
from fedsilo.server.strategies.round_step import Contribution

State = dict[str, torch.Tensor]
GROUP = "c"


class ScaffoldOptions(BaseModel):
    """SCAFFOLD's options (``strategy_options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server_learning_rate: float = Field(1.0, gt=0, description="Global step size eta_g.")
    population: int | None = Field(
        None, ge=1, description="Clients in the federation, N (default: those of the round)."
    )


class Scaffold:
    """SCAFFOLD's server side: the global step and the server control variate ``c``."""

    name = "scaffold"
    needs_all_updates: Literal[False] = False  # model and dc are folded as they stream

    def __init__(self, server_learning_rate: float = 1.0, population: int | None = None) -> None:
        options = ScaffoldOptions(server_learning_rate=server_learning_rate, population=population)
        self.server_learning_rate = options.server_learning_rate
        self.population = options.population
        self.buffers = ServerBuffers({GROUP: 0.0})

    def server_control(self, global_state: Mapping[str, torch.Tensor]) -> State:
        """Return ``c`` by model name, in the model's dtypes (zeros before the first step)."""
        if self.buffers.step == 0:
            self.buffers.prepare(
                {
                    name: torch.zeros(t.shape, dtype=compute_dtype(t.dtype))
                    for name, t in global_state.items()
                    if t.is_floating_point()
                }
            )
        control = self.buffers.tensors[GROUP]
        return {name: control[name].to(global_state[name].dtype) for name in control}

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next model, every client of the federation having taken part."""
        return self._step(global_state, mean_update, multiplier=1.0)

    def round_step(
        self,
        global_state: State,
        mean_update: Mapping[str, torch.Tensor],
        contributions: Sequence[Contribution],
    ) -> State:
        """Return the next model; ``c`` moves by ``|S| / N`` times the mean ``dc``."""
        taking_part = len(contributions)
        population = self.population if self.population is not None else taking_part
        return self._step(global_state, mean_update, multiplier=taking_part / population)

    def _step(
        self, global_state: State, mean_update: Mapping[str, torch.Tensor], multiplier: float
    ) -> State:
        control = self.server_control(global_state)  # creates c = 0 before the first step
        old = self.buffers.tensors[GROUP]
        new_control: State = {}
        out: State = {}
        for name, current in global_state.items():
            if name not in control:
                out[name] = mean_update[name]
                continue
            dtype = compute_dtype(current.dtype)
            x = current.to(dtype)
            stepped = x + self.server_learning_rate * (mean_update[name].to(dtype) - x)
            out[name] = stepped.to(current.dtype)
            new_control[name] = old[name] + multiplier * mean_update[name + DELTA_SUFFIX].to(dtype)
        self.buffers.advance({GROUP: new_control})
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return ``c`` (as ``c/<name>``) and the step count."""
        return self.buffers.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore ``c`` and the step count; raise ValueError on unknown keys."""
        self.buffers.load_state_dict(state)
