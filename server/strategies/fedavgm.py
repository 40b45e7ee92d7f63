"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019, https://arxiv.org/abs/1909.06335).

Each round the server takes the pseudo-gradient ``delta = mean - g`` (the example-weighted mean of
the clients' models minus the current global model) and makes one heavy-ball step::

    v  = momentum * v + delta
    g' = g + server_learning_rate * v

Hsu et al. write it with ``delta = g - mean`` and ``g' = g - v``; Flower's FedAvgM adds the
server learning rate. With ``server_learning_rate=1, momentum=0`` it is FedAvg. Defaults:
``server_learning_rate=1.0`` (Flower's default) and ``momentum=0.9`` (a value in Hsu et al.'s
sweeps; Flower defaults to 0). In a steady state the step is ``server_learning_rate /
(1 - momentum)`` times the mean delta, 10x with the defaults: Hsu et al.'s "effective learning
rate", which they tune; lower ``server_learning_rate`` to keep it near 1.

Only floating-point tensors are stepped, computed in float32 (float64 for float64 tensors) and
returned in their own dtype; integer buffers take the mean's value. Pure tensor arithmetic: no
I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.server.strategies.fedopt import ServerBuffers, assemble, pseudo_gradient

State = dict[str, torch.Tensor]


def momentum_step(
    g: torch.Tensor,
    delta: torch.Tensor,
    velocity: torch.Tensor,
    *,
    server_learning_rate: float,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (next g, next velocity) after one heavy-ball step; inputs are not modified."""
    new_velocity = momentum * velocity + delta
    return g + server_learning_rate * new_velocity, new_velocity


class FedAvgMOptions(BaseModel):
    """FedAvgM's options (``strategy_options``); the defaults are explained above."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server_learning_rate: float = Field(1.0, gt=0, description="Step along the velocity.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Heavy-ball momentum of the velocity.")


class FedAvgM:
    """FedAvgM: the server steps along a momentum of the clients' mean deltas; keeps v."""

    name = "fedavgm"
    needs_all_updates: Literal[False] = False  # needs only the streamed weighted mean

    def __init__(self, server_learning_rate: float = 1.0, momentum: float = 0.9) -> None:
        options = FedAvgMOptions(server_learning_rate=server_learning_rate, momentum=momentum)
        self.server_learning_rate = options.server_learning_rate
        self.momentum = options.momentum
        self.buffers = ServerBuffers({"v": 0.0})

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model after one momentum step."""
        delta = pseudo_gradient(global_state, mean_update)
        self.buffers.prepare(delta)
        velocity = self.buffers.tensors["v"]
        stepped: State = {}
        new_velocity: State = {}
        for name, d in delta.items():
            stepped[name], new_velocity[name] = momentum_step(
                global_state[name].to(d.dtype),
                d,
                velocity[name],
                server_learning_rate=self.server_learning_rate,
                momentum=self.momentum,
            )
        self.buffers.advance({"v": new_velocity})
        return assemble(global_state, mean_update, stepped)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the velocity and the step count."""
        return self.buffers.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the velocity and the step count; raise ValueError on unknown keys."""
        self.buffers.load_state_dict(state)
