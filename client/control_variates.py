"""One client's SCAFFOLD control variate ``c_i``, kept across rounds, restarts and resumes.

Each round that trains with control variates produces a new ``c_i`` (option II of Karimireddy
et al. 2020: ``c_i+ = c_i - c + (x - y_i) / (K * lr)``, computed in ``client/work.py``).
Versions are kept by the round that produced them, and round r trains with the newest one
produced before r. So a server resumed from an older checkpoint, which replays rounds this
client already trained, gets the very variate the first run used: the replayed rounds give
the same bits. Saving round r's version drops every version from round r on (a replay, or a
fresh job whose round 1 finds the files of an older one), and only the newest ``KEEP``
versions are kept: a server resumed from further back than that gets the oldest kept one.

The daemon keeps them in its run folder, next to ``audit.jsonl``, one file per version
(``control_variates/job-<id>/round-<r>.cv``): a fixed magic, a JSON header naming the round
and each tensor's name, dtype and shape, the raw little-endian bytes, and their xxh3-64.
Written to a temp file, fsynced and renamed; read back only when the header equals the
model's control variates, byte for byte in size and checksum. Nothing is pickled. fl-sim's
clients keep theirs in memory (no folder).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xxhash

from fedsilo.common import control_variates
from fedsilo.common.errors import ConfigError
from fedsilo.common.specs import DTYPES, TensorSpec, byte_view, dtype_name
from fedsilo.common.tensor_stream import wire_ready

KEEP = 8
FOLDER = "control_variates"
MAGIC = b"FEDSILO-CV1\n"
_LENGTH = struct.Struct("<Q")
MAX_HEADER = 16 << 20

State = dict[str, torch.Tensor]


class ControlVariateStore:
    """This client's control variates by round: in memory, or in files under ``folder``."""

    def __init__(self, specs: Sequence[TensorSpec], folder: Path | None) -> None:
        self.specs = list(specs)  # the model's floating tensors, under their own names
        self.folder = folder
        self._memory: dict[int, State] = {}
        # The server's variate c of the round being trained (``client/incoming.py`` sets it).
        self.server: State | None = None
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot write {folder}: {exc.strerror}") from exc

    def rounds(self) -> list[int]:
        """Return the rounds whose versions are kept, oldest first."""
        if self.folder is None:
            return sorted(self._memory)
        found = []
        for path in self.folder.glob("round-*.cv"):
            number = path.stem.removeprefix("round-")
            if number.isdigit():
                found.append(int(number))
        return sorted(found)

    def for_round(self, round_number: int) -> State:
        """Return the variate round ``round_number`` trains with: the newest from before it."""
        earlier = [r for r in self.rounds() if r < round_number]
        if not earlier:
            return control_variates.zeros(self.specs)
        newest = earlier[-1]
        if self.folder is None:
            return {name: t.clone() for name, t in self._memory[newest].items()}
        return read_variate(self._path(newest), newest, self.specs)

    def save(self, round_number: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Keep round ``round_number``'s version; drop later ones and all but the newest KEEP."""
        for stale in self.rounds():
            if stale >= round_number:
                self._drop(stale)
        if self.folder is None:
            self._memory[round_number] = {s.name: tensors[s.name].clone() for s in self.specs}
        else:
            write_variate(self._path(round_number), round_number, self.specs, tensors)
        for old in self.rounds()[:-KEEP]:
            self._drop(old)

    def _path(self, round_number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{round_number:06d}.cv"

    def _drop(self, round_number: int) -> None:
        if self.folder is None:
            self._memory.pop(round_number, None)
        else:
            self._path(round_number).unlink(missing_ok=True)


def write_variate(
    path: Path, round_number: int, specs: Sequence[TensorSpec], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write one version atomically: magic, header, raw bytes, xxh3-64; fsynced, renamed."""
    header = json.dumps(
        {
            "round": round_number,
            "tensors": [
                {"name": s.name, "dtype": dtype_name(s.dtype), "shape": list(s.shape)}
                for s in specs
            ],
        }
    ).encode()
    hasher = xxhash.xxh3_64()
    temp = path.with_suffix(".tmp")
    with temp.open("wb") as handle:
        handle.write(MAGIC + _LENGTH.pack(len(header)) + header)
        for spec in specs:
            data = byte_view(wire_ready(tensors[spec.name])).data
            hasher.update(data)
            handle.write(data)
        handle.write(_LENGTH.pack(hasher.intdigest()))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_variate(path: Path, round_number: int, specs: Sequence[TensorSpec]) -> State:
    """Read one version; raise ConfigError unless it is exactly these specs' tensors, intact."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    head = len(MAGIC) + _LENGTH.size
    if not raw.startswith(MAGIC) or len(raw) < head:
        raise ConfigError(f"{path} is not a fedsilo control-variate file")
    (length,) = _LENGTH.unpack_from(raw, len(MAGIC))
    expected = {
        "round": round_number,
        "tensors": [
            {"name": s.name, "dtype": dtype_name(s.dtype), "shape": list(s.shape)} for s in specs
        ],
    }
    try:
        header = json.loads(raw[head : head + min(length, MAX_HEADER)])
    except ValueError:
        header = None
    size = sum(s.nbytes for s in specs)
    if header != expected or len(raw) != head + length + size + _LENGTH.size:
        raise ConfigError(
            f"{path} does not hold this model's control variate of round {round_number}"
        )
    body = memoryview(raw)[head + length : head + length + size]
    (checksum,) = _LENGTH.unpack_from(raw, head + length + size)
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise ConfigError(f"{path}: checksum mismatch (the file is damaged)")
    out: State = {}
    offset = 0
    for spec in specs:
        tensor = torch.empty(spec.shape, dtype=DTYPES[dtype_name(spec.dtype)])
        byte_view(tensor)[:] = np.frombuffer(body[offset : offset + spec.nbytes], dtype=np.uint8)
        out[spec.name] = tensor
        offset += spec.nbytes
    return out


def round_inputs(store: ControlVariateStore, round_number: int) -> tuple[State, State, State]:
    """Return ``(c, c_i, c - c_i)`` for training round ``round_number``."""
    if store.server is None:
        raise ConfigError("the job uses control variates; the round's stream had none")
    own = store.for_round(round_number)
    return store.server, own, correction(store.server, own)


def correction(server: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> State:
    """Return ``c - c_i`` by name: what every local step subtracts, times the learning rate."""
    return {name: server[name] - own[name] for name in own}


def next_variate(
    own: Mapping[str, torch.Tensor],
    server: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    *,
    steps: int,
    learning_rate: float,
    parameters: set[str],
) -> tuple[State, State]:
    """Return SCAFFOLD's option II ``(c_i+, c_i+ - c_i)`` after ``steps`` local steps.

    ``c_i+ = c_i - c + (x - y_i) / (steps * lr)`` for each parameter, ``x`` being the model the
    round started from and ``y_i`` the trained one, in float32 (float64 for float64 tensors)
    and stored in the tensor's dtype. A tensor that is no parameter (a buffer) or a round with
    no step keeps ``c_i``: nothing was learnt from a gradient there.
    """
    new: State = {}
    delta: State = {}
    for name, c_i in own.items():
        if name in parameters and steps > 0:
            work = torch.promote_types(c_i.dtype, torch.float32)
            drift = (start[name].to(work) - trained[name].detach().cpu().to(work)) / (
                steps * learning_rate
            )
            updated = (c_i.to(work) - server[name].to(work) + drift).to(c_i.dtype)
        else:
            updated = c_i.clone()
        new[name] = updated
        delta[name] = (updated.to(torch.promote_types(c_i.dtype, torch.float32)) - c_i).to(
            c_i.dtype
        )
    return new, delta
