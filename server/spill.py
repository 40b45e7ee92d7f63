"""Spill files: an upload that waits for its turn, written to disk as it arrives, read back a
block at a time. Server only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import TensorSpec, byte_view
from fedsilo.server.allocator import SCRATCH_BYTES


class SpillSink:
    """A tensor stream's sink that writes its bytes to a new file, in order."""

    spills = True

    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        on_remove: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self._specs = list(specs)
        self._on_remove = on_remove  # called once, when the file is deleted
        self._handle: BinaryIO | None = open(path, "xb", buffering=0)  # noqa: SIM115 - closed by result/discard

    def write(self, index: int, offset: int, data: memoryview) -> None:
        """Append the bytes (they arrive in stream order)."""
        assert self._handle is not None, "spill file already closed"
        _write_all(self._handle, data)

    def result(self) -> SpilledTensors:
        """Close the file; return its tensors, read on access."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return SpilledTensors(self.path, self._specs, self._on_remove)

    def discard(self) -> None:
        """Close and delete the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self.path.unlink(missing_ok=True)
            self._on_remove()


def _write_all(handle: BinaryIO, data: memoryview) -> None:
    while data:
        written = handle.write(data)
        data = data[written or 0 :]


class SpilledTensors(Mapping[str, torch.Tensor]):
    """Tensors stored back to back in a file (a spilled tensor stream), read on access.

    Each lookup reads that one tensor into a fresh tensor, so holding this costs no memory;
    ``remove`` deletes the file once the tensors are no longer needed.
    """

    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        on_remove: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self._on_remove: Callable[[], None] | None = on_remove
        self._specs = {spec.name: spec for spec in specs}
        self._offsets: dict[str, int] = {}
        offset = 0
        for spec in specs:
            self._offsets[spec.name] = offset
            offset += spec.nbytes

    def __getitem__(self, name: str) -> torch.Tensor:
        spec = self._specs[name]
        tensor = torch.empty(spec.shape, dtype=spec.dtype)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self._offsets[name])
            self._read_exactly(handle, byte_view(tensor).data, name)
        return tensor

    def blocks(self, name: str, block_bytes: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first element, flat block) of one tensor, read a block at a time.

        Every block is read into the same buffer: use each one before asking for the next.
        """
        spec = self._specs[name]
        itemsize = spec.dtype.itemsize
        per_block = max(1, block_bytes // itemsize)
        buffer = torch.empty(min(per_block, spec.numel), dtype=spec.dtype)
        raw = byte_view(buffer).data
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self._offsets[name])
            for start in range(0, spec.numel, per_block):
                count = min(per_block, spec.numel - start)
                self._read_exactly(handle, raw[: count * itemsize], name)
                yield start, buffer[:count]

    def _read_exactly(self, handle: io.FileIO, into: memoryview, name: str) -> None:
        filled = 0
        while filled < len(into):
            count = handle.readinto(into[filled:])
            if not count:
                raise CodecError(f"spill file {self.path} ends inside tensor {name!r}")
            filled += count

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def remove(self) -> None:
        """Delete the file (its space is given back to whoever counted it, once)."""
        self.path.unlink(missing_ok=True)
        callback, self._on_remove = self._on_remove, None
        if callback is not None:
            callback()


# What a pass over a big tensor holds at once: below the mmap threshold, so that the read buffer
# of a spilled tensor and each op's temporaries (abs, compare) come from the reused heap. At
# 16 MiB, every spilled update being checked or folded mapped 16-36 MiB of fresh pages per block
# (bench/aggregation_bench.py: three to five 16 MiB mappings alive at the peak of 16 uploads).
BLOCK_BYTES = SCRATCH_BYTES


def tensor_blocks(
    tensors: Mapping[str, torch.Tensor], name: str, block_bytes: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first element, flat block) of ``tensors[name]``, without loading a spilled one whole.

    Elementwise work done block by block gives the same bits as on the whole tensor.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    if isinstance(tensors, SpilledTensors):
        yield from tensors.blocks(name, block_bytes)
        return
    flat = tensors[name].reshape(-1)
    per_block = max(1, block_bytes // flat.element_size())
    for start in range(0, flat.numel(), per_block):
        yield start, flat[start : start + per_block]
