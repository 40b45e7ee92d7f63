"""What a client and its training ranks share for one round: a spec, the weights, a result.

One private folder per round (mode 0700, removed afterwards) holds:

- ``round.json`` (``RankRound``): the task to build (the class the client's policy admitted),
  its data, the round's training settings and the specs of the model's tensors;
- ``weights.bin``: the model's state as raw bytes, each tensor 64-byte aligned, which every
  process maps ``MAP_SHARED`` (``SharedWeights``). The ranks load the received model from it
  and rank 0 writes its trained model back into it: nothing is pickled, nothing goes through a
  pipe, and the client reads the update from the same pages;
- ``result.json`` (``RankResult``): rank 0's TrainResult.

Both sides derive the byte layout from the same specs, and a rank checks its own model's specs
against the client's before it reads a byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsilo.common.errors import LocalTrainingError
from fedsilo.common.specs import DTYPES, TensorSpec, dtype_name
from fedsilo.tasks import TrainConfig, TrainResult

ROUND_FILE = "round.json"
WEIGHTS_FILE = "weights.bin"
RESULT_FILE = "result.json"
ALIGN = 64  # bytes: any dtype's view of the mapping starts at a multiple of its item size

M = TypeVar("M", bound=BaseModel)


class TensorEntry(BaseModel):
    """One tensor of the model: name, dtype (wire name) and shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: list[int]


class RankTraining(BaseModel):
    """The round's training settings, as the client's TrainConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    proximal_mu: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def config(self) -> TrainConfig:
        """Return these settings as the Task's TrainConfig."""
        return TrainConfig(**self.model_dump())


class RankRound(BaseModel):
    """Everything a rank needs to train one round, written by the client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_class: str  # module:qualname of the class the client resolved under its policy
    task_name: str
    options_json: str
    model_seed: int
    data_seed: int
    partition: int
    data_dir: str | None
    training: RankTraining
    tensors: list[TensorEntry]
    device: Literal["cpu", "cuda"]
    threads: int = Field(ge=1)
    sys_path: list[str]
    log_level: str
    log_context: dict[str, str | int]

    def specs(self) -> list[TensorSpec]:
        """Return the tensors' specs."""
        return [TensorSpec(t.name, DTYPES[t.dtype], tuple(t.shape)) for t in self.tensors]


class RankResult(BaseModel):
    """What rank 0's training reported."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    examples: int = Field(ge=0)
    loss: float
    steps: int = Field(ge=0)

    def train_result(self) -> TrainResult:
        """Return it as the Task's TrainResult."""
        return TrainResult(examples=self.examples, loss=self.loss, steps=self.steps)


def entries_of(specs: Sequence[TensorSpec]) -> list[TensorEntry]:
    """Describe specs for round.json."""
    return [TensorEntry(name=s.name, dtype=dtype_name(s.dtype), shape=list(s.shape)) for s in specs]


def write_json(path: Path, model: BaseModel) -> None:
    """Write a model as JSON, whole or not at all (a reader never sees half a file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(model.model_dump_json())
    os.replace(partial, path)


def read_round(folder: Path) -> RankRound:
    """Read the round's spec; raise LocalTrainingError if it is missing or malformed."""
    return _read(folder / ROUND_FILE, RankRound)


def read_result(folder: Path) -> RankResult:
    """Read rank 0's result; raise LocalTrainingError if it is missing or malformed."""
    return _read(folder / RESULT_FILE, RankResult)


def _read(path: Path, model: type[M]) -> M:
    try:
        return model.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise LocalTrainingError(f"{path.name}: {exc}") from exc


def layout(specs: Sequence[TensorSpec]) -> tuple[list[int], int]:
    """Return each tensor's byte offset in weights.bin (aligned) and the file's length."""
    offsets, end = [], 0
    for spec in specs:
        end = -(-end // ALIGN) * ALIGN
        offsets.append(end)
        end += spec.nbytes
    return offsets, end


class SharedWeights:
    """A state dict in one file that every process maps shared: views by tensor name."""

    def __init__(self, path: Path, specs: Sequence[TensorSpec]) -> None:
        offsets, total = layout(specs)
        # size >= 1: a mapping of zero bytes is refused, and a model may have no tensors.
        flat = torch.from_file(str(path), shared=True, size=max(total, 1), dtype=torch.uint8)
        self.views = {
            spec.name: flat[offset : offset + spec.nbytes].view(spec.dtype).view(spec.shape)
            for spec, offset in zip(specs, offsets, strict=True)
        }

    @classmethod
    def create(cls, path: Path, specs: Sequence[TensorSpec]) -> SharedWeights:
        """Create the file (it must not exist) at its full length and map it."""
        with path.open("xb") as file:
            file.truncate(max(layout(specs)[1], 1))
        return cls(path, specs)

    @torch.no_grad()
    def store(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a state dict (any device) into the file."""
        for name, view in self.views.items():
            view.copy_(state[name])

    @torch.no_grad()
    def load_into(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy the file's tensors into a state dict's own tensors, in place."""
        for name, view in self.views.items():
            state[name].copy_(view)
