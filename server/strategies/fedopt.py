"""FedAdagrad, FedAdam and FedYogi: adaptive optimizers run by the server (Reddi et al. 2021).

"Adaptive Federated Optimization", ICLR 2021 (https://arxiv.org/abs/2003.00295), Algorithm 2.
Each round the server takes the pseudo-gradient ``delta = mean - g`` (the example-weighted mean
of the clients' models minus the current global model) and makes one step::

    m  = beta1 * m + (1 - beta1) * delta
    v  = v + delta^2                                       FedAdagrad
    v  = beta2 * v + (1 - beta2) * delta^2                 FedAdam
    v  = v - (1 - beta2) * delta^2 * sign(v - delta^2)     FedYogi
    g' = g + eta * m / (sqrt(v) + tau)

No bias correction, as in Algorithm 2 (Flower's FedAdam scales eta by Adam's bias correction).

Defaults, the same for all three: ``eta=1e-2, beta1=0.9, beta2=0.99, tau=1e-3``. beta1 and beta2
are the values the paper's experiments fix; the paper tunes eta and tau per task, and 1e-2 and
1e-3 are Flower's FedYogi defaults (Flower's FedAdam and FedAdagrad default to eta=1e-1,
tau=1e-9, and its FedAdagrad fixes beta1=0; Algorithm 2 applies the same momentum to all three).
``initial_v``, the value v starts from, defaults to ``tau**2``: Algorithm 2 asks for
``v_{-1} >= tau^2``. Flower starts v at 0; pass ``initial_v=0`` to match it.

Only floating-point tensors are optimized, computed in float32 (float64 for float64 tensors) and
returned in their own dtype; integer buffers (e.g. BatchNorm's ``num_batches_tracked``) take the
mean's value. The helpers that FedAvgM shares (``pseudo_gradient``, ``assemble``,
``ServerBuffers``) live here. Pure tensor arithmetic: no I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

State = dict[str, torch.Tensor]
Rule = Literal["adagrad", "adam", "yogi"]
STEP_KEY = "step"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype a server step on a floating-point ``dtype`` tensor is computed in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pseudo_gradient(
    global_state: Mapping[str, torch.Tensor], mean_update: Mapping[str, torch.Tensor]
) -> State:
    """Return ``mean - global`` of every floating-point tensor, in its compute dtype."""
    if set(global_state) != set(mean_update):
        raise ValueError(
            f"mean update names {sorted(mean_update)} but the model has {sorted(global_state)}"
        )
    delta: State = {}
    for name, current in global_state.items():
        if current.is_complex():
            raise ValueError(f"{name}: a server optimizer cannot step a complex tensor")
        if current.is_floating_point():
            dtype = compute_dtype(current.dtype)
            delta[name] = mean_update[name].to(dtype) - current.to(dtype)
    return delta


def assemble(
    global_state: Mapping[str, torch.Tensor],
    mean_update: Mapping[str, torch.Tensor],
    stepped: Mapping[str, torch.Tensor],
) -> State:
    """Return the next model: stepped tensors in their own dtype, the others from the mean."""
    return {
        name: stepped[name].to(current.dtype) if name in stepped else mean_update[name]
        for name, current in global_state.items()
    }


@dataclass
class ServerBuffers:
    """A server optimizer's per-tensor buffers (e.g. m and v) and its step count.

    ``initial`` maps each buffer group to the value its tensors start from. The checkpoint state
    is ``{"step": 0-d int64 tensor, "<group>/<tensor name>": tensor, ...}``.
    """

    initial: dict[str, float]
    step: int = 0
    tensors: dict[str, State] = field(default_factory=dict)

    def prepare(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Create the buffers before the first step; check they fit the model after it."""
        if self.step == 0:
            self.tensors = {
                group: {name: torch.full_like(d, value) for name, d in delta.items()}
                for group, value in self.initial.items()
            }
            return
        for group, buffers in self.tensors.items():
            if set(buffers) != set(delta):
                raise ValueError(
                    f"strategy state {group!r} holds {sorted(buffers)}, "
                    f"but the model's floating-point tensors are {sorted(delta)}"
                )
            for name, d in delta.items():
                if buffers[name].shape != d.shape or buffers[name].dtype != d.dtype:
                    raise ValueError(
                        f"strategy state {group}/{name} is {buffers[name].dtype} "
                        f"{tuple(buffers[name].shape)}, the model needs {d.dtype} {tuple(d.shape)}"
                    )

    def advance(self, tensors: dict[str, State]) -> None:
        """Replace the buffers with those after one more step."""
        self.tensors = tensors
        self.step += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the step count and every buffer, as tensors."""
        state = {STEP_KEY: torch.tensor(self.step, dtype=torch.int64)}
        for group, buffers in self.tensors.items():
            state.update({f"{group}/{name}": t.clone() for name, t in buffers.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned; raise ValueError on anything else."""
        step = state.get(STEP_KEY)
        if not isinstance(step, torch.Tensor) or step.dim() != 0 or step.is_floating_point():
            raise ValueError(f"strategy state needs {STEP_KEY!r} as a 0-d integer tensor")
        tensors: dict[str, State] = {group: {} for group in self.initial}
        for key, value in state.items():
            if key == STEP_KEY:
                continue
            group, sep, name = key.partition("/")
            if not sep or not name or group not in tensors:
                raise ValueError(
                    f"unknown strategy state key {key!r}; expected {STEP_KEY!r} or "
                    f"'<group>/<tensor>' with group in {sorted(tensors)}"
                )
            if not value.is_floating_point():
                raise ValueError(f"strategy state {key!r} is {value.dtype}, not floating point")
            tensors[group][name] = value.detach().clone()
        names = [sorted(buffers) for buffers in tensors.values()]
        if any(n != names[0] for n in names):
            raise ValueError(f"strategy state groups name different tensors: {names}")
        if int(step) < 0 or (int(step) == 0 and names[0]):
            raise ValueError(f"strategy state at step {int(step)} cannot hold buffers")
        self.step = int(step)
        self.tensors = tensors if self.step else {}


def adaptive_step(  # noqa: PLR0913 - the symbols of Algorithm 2, one per parameter
    g: torch.Tensor,
    delta: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    rule: Rule,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (next g, next m, next v) after one step of Algorithm 2; inputs are not modified."""
    new_m = beta1 * m + (1 - beta1) * delta
    square = delta * delta
    if rule == "adagrad":
        new_v = v + square
    elif rule == "adam":
        new_v = beta2 * v + (1 - beta2) * square
    elif rule == "yogi":
        new_v = v - (1 - beta2) * square * torch.sign(v - square)
    else:
        raise ValueError(f"unknown adaptive rule {rule!r}")
    return g + eta * new_m / (new_v.sqrt() + tau), new_m, new_v


class FedAdagradOptions(BaseModel):
    """FedAdagrad's options (``strategy_options``); the defaults are explained above."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(1e-2, gt=0, description="Server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="Decay of the first moment m.")
    tau: float = Field(1e-3, gt=0, description="Added to sqrt(v): the degree of adaptivity.")
    initial_v: float | None = Field(None, ge=0, description="Start of v (default tau**2).")


class FedAdamOptions(FedAdagradOptions):
    """FedAdam's options: FedAdagrad's and the decay of v."""

    beta2: float = Field(0.99, ge=0, lt=1, description="Decay of the second moment v.")


FedYogiOptions = FedAdamOptions  # Yogi has Adam's hyper-parameters; only its v update differs


@dataclass(frozen=True)
class AdaptiveOptions:
    """Hyper-parameters of one adaptive server optimizer (``beta2`` is unused by adagrad)."""

    rule: Rule
    eta: float
    beta1: float
    beta2: float
    tau: float
    initial_v: float


def adaptive_options(
    rule: Rule, *, eta: float, beta1: float, beta2: float, tau: float, initial_v: float | None
) -> AdaptiveOptions:
    """Return options checked by the rule's options model; ``initial_v=None`` means ``tau**2``."""
    if rule == "adagrad":
        checked: FedAdagradOptions = FedAdagradOptions(
            eta=eta, beta1=beta1, tau=tau, initial_v=initial_v
        )
    else:
        checked = FedAdamOptions(eta=eta, beta1=beta1, beta2=beta2, tau=tau, initial_v=initial_v)
    return AdaptiveOptions(
        rule=rule,
        eta=checked.eta,
        beta1=checked.beta1,
        beta2=checked.beta2 if isinstance(checked, FedAdamOptions) else 0.0,
        tau=checked.tau,
        initial_v=checked.tau**2 if checked.initial_v is None else checked.initial_v,
    )


def adaptive_round(
    global_state: Mapping[str, torch.Tensor],
    mean_update: Mapping[str, torch.Tensor],
    buffers: ServerBuffers,
    options: AdaptiveOptions,
) -> State:
    """Step the whole model once, advancing ``buffers``; return the next global model."""
    delta = pseudo_gradient(global_state, mean_update)
    buffers.prepare(delta)
    m, v = buffers.tensors["m"], buffers.tensors["v"]
    stepped: State = {}
    new_m: State = {}
    new_v: State = {}
    for name, d in delta.items():
        stepped[name], new_m[name], new_v[name] = adaptive_step(
            global_state[name].to(d.dtype),
            d,
            m[name],
            v[name],
            rule=options.rule,
            eta=options.eta,
            beta1=options.beta1,
            beta2=options.beta2,
            tau=options.tau,
        )
    buffers.advance({"m": new_m, "v": new_v})
    return assemble(global_state, mean_update, stepped)


def moment_buffers(options: AdaptiveOptions) -> ServerBuffers:
    """Return empty m and v buffers: m starts at 0, v at ``options.initial_v``."""
    return ServerBuffers({"m": 0.0, "v": options.initial_v})


class FedAdagrad:
    """FedAdagrad: Adagrad on the server, fed the clients' mean pseudo-gradient; keeps m and v."""

    name = "fedadagrad"
    needs_all_updates: Literal[False] = False  # needs only the streamed weighted mean

    def __init__(
        self,
        eta: float = 1e-2,
        beta1: float = 0.9,
        tau: float = 1e-3,
        initial_v: float | None = None,
    ) -> None:
        self.options = adaptive_options(
            "adagrad", eta=eta, beta1=beta1, beta2=0.0, tau=tau, initial_v=initial_v
        )
        self.buffers = moment_buffers(self.options)

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model after one FedAdagrad step."""
        return adaptive_round(global_state, mean_update, self.buffers, self.options)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return m, v and the step count."""
        return self.buffers.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore m, v and the step count; raise ValueError on unknown keys."""
        self.buffers.load_state_dict(state)


class FedAdam:
    """FedAdam: Adam on the server, fed the clients' mean pseudo-gradient; keeps m and v."""

    name = "fedadam"
    needs_all_updates: Literal[False] = False  # needs only the streamed weighted mean

    def __init__(
        self,
        eta: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float | None = None,
    ) -> None:
        self.options = adaptive_options(
            "adam", eta=eta, beta1=beta1, beta2=beta2, tau=tau, initial_v=initial_v
        )
        self.buffers = moment_buffers(self.options)

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model after one FedAdam step."""
        return adaptive_round(global_state, mean_update, self.buffers, self.options)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return m, v and the step count."""
        return self.buffers.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore m, v and the step count; raise ValueError on unknown keys."""
        self.buffers.load_state_dict(state)


class FedYogi:
    """FedYogi: Yogi on the server, fed the clients' mean pseudo-gradient; keeps m and v."""

    name = "fedyogi"
    needs_all_updates: Literal[False] = False  # needs only the streamed weighted mean

    def __init__(
        self,
        eta: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float | None = None,
    ) -> None:
        self.options = adaptive_options(
            "yogi", eta=eta, beta1=beta1, beta2=beta2, tau=tau, initial_v=initial_v
        )
        self.buffers = moment_buffers(self.options)

    def next_global(self, global_state: State, mean_update: State) -> State:
        """Return the next global model after one FedYogi step."""
        return adaptive_round(global_state, mean_update, self.buffers, self.options)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return m, v and the step count."""
        return self.buffers.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore m, v and the step count; raise ValueError on unknown keys."""
        self.buffers.load_state_dict(state)
