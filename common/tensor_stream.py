"""Tensor streams: tensors to chunks of raw bytes and back, with a checksum, and no pickle.

A tensor stream is a header (``common/specs.py``), then the raw little-endian bytes of all its
tensors back to back, cut into chunks of at most ``chunk_size`` bytes (a chunk may span tensor
boundaries), then a trailer holding the xxh3-64 (seed 0) of those bytes.

Encoding never copies a contiguous CPU tensor: chunks are memoryviews into the tensors' storage.
Decoding bounds-checks every chunk against the header and hands its bytes, split at tensor
boundaries, to a sink: by default into preallocated tensors (a model's own, decoded in place);
the server also has sinks that spill to disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
import xxhash

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import TensorSpec, byte_view

DEFAULT_CHUNK_SIZE = 1 << 20


def wire_ready(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor detached, on the CPU and contiguous, copying only when needed."""
    # Each test is a cheap attribute read; the calls that make a new tensor run only when due.
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_cpu:
        tensor = tensor.cpu()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor if tensor.is_contiguous() else tensor.contiguous()


class TensorStreamEncoder:
    """Cut a sequence of tensors into chunks of raw bytes and checksum them.

    Iterate to get the chunks, each a list of memoryviews (one chunk may span tensors);
    ``checksum`` is valid once iteration has finished. With ``start``, the chunks carry bytes
    ``start ..`` only (a resumed stream), while the checksum still covers every byte from 0.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checksum: bool = True,
        start: int = 0,
    ):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._tensors = [wire_ready(t) for t in tensors]
        if not 0 <= start <= self.total_bytes:
            raise ValueError(f"start {start} is outside the stream's 0..{self.total_bytes} bytes")
        self._start = start
        self._chunk_size = chunk_size
        self._hash = xxhash.xxh3_64() if checksum else None
        self._done = False

    @property
    def total_bytes(self) -> int:
        """Total number of raw bytes the chunks carry."""
        return sum(t.numel() * t.element_size() for t in self._tensors)

    @property
    def checksum(self) -> int:
        """The xxh3-64 of every byte of the stream (from 0); only valid after the last chunk."""
        if not self._done:
            raise RuntimeError("checksum read before the stream was fully encoded")
        if self._hash is None:
            raise RuntimeError("this encoder was made with checksum=False")
        return int(self._hash.intdigest())

    def __iter__(self) -> Iterator[list[memoryview]]:
        parts: list[memoryview] = []
        room = self._chunk_size
        skip = self._start  # bytes already delivered: hashed, not yielded
        for tensor in self._tensors:
            view = byte_view(tensor).data
            offset = min(skip, len(view))
            skip -= offset
            if offset and self._hash is not None:
                self._hash.update(view[:offset])
            while offset < len(view):
                take = min(room, len(view) - offset)
                part = view[offset : offset + take]
                if self._hash is not None:
                    self._hash.update(part)
                parts.append(part)
                offset += take
                room -= take
                if room == 0:
                    yield parts
                    parts, room = [], self._chunk_size
        if parts:
            yield parts
        self._done = True


class StreamSink(Protocol):
    """Where a decoder puts a stream's bytes: in order, split at tensor boundaries."""

    spills: bool  # whether the bytes go to disk rather than memory

    def write(self, index: int, offset: int, data: memoryview) -> None:
        """Take bytes ``offset .. offset + len(data)`` of tensor ``index``."""

    def result(self) -> Mapping[str, torch.Tensor]:
        """Return the decoded tensors by name (the stream is complete and intact)."""

    def discard(self) -> None:
        """Give up: release whatever the sink holds (a file, for instance)."""


class MemorySink:
    """Copies a stream's bytes into tensors: ``into`` (e.g. a model's own), or fresh ones."""

    spills = False

    def __init__(
        self, specs: Sequence[TensorSpec], into: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        for spec in specs:
            if into is not None:
                target = into[spec.name]
                if not (target.device.type == "cpu" and target.is_contiguous()):
                    raise ValueError(f"tensor {spec.name!r} is not a contiguous CPU tensor")
                if (target.dtype, tuple(target.shape)) != (spec.dtype, spec.shape):
                    raise ValueError(f"tensor {spec.name!r} does not match its spec")
            else:
                target = torch.empty(spec.shape, dtype=spec.dtype)
            self.tensors[spec.name] = target
        self._views = [byte_view(tensor) for tensor in self.tensors.values()]

    def write(self, index: int, offset: int, data: memoryview) -> None:
        """Copy bytes into place."""
        self._views[index][offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def result(self) -> Mapping[str, torch.Tensor]:
        """Return the tensors."""
        return self.tensors

    def discard(self) -> None:
        """Nothing to release: the tensors are garbage once unreferenced."""


class TensorStreamDecoder:
    """Receive the chunks of one tensor stream into a sink (by default, into tensors).

    ``into`` gives the destination tensors of the default sink; without it, fresh tensors are
    allocated once from the specs. Every chunk is bounds-checked against the header before it is
    used; ``finish`` checks length and checksum.
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        into: Mapping[str, torch.Tensor] | None = None,
        max_chunk_size: int = DEFAULT_CHUNK_SIZE,
        sink: StreamSink | None = None,
    ) -> None:
        if sink is not None and into is not None:
            raise ValueError("decode into tensors or into a sink, not both")
        self.specs = list(specs)
        self.sink: StreamSink = sink if sink is not None else MemorySink(self.specs, into)
        self._sizes = [spec.nbytes for spec in self.specs]
        self._index = 0  # tensor being filled
        self._offset = 0  # bytes filled in that tensor
        self.received_bytes = 0
        self.total_bytes = sum(self._sizes)
        self._max_chunk_size = max_chunk_size
        self._hash = xxhash.xxh3_64()

    @property
    def spills(self) -> bool:
        """Whether the stream's bytes go to disk."""
        return self.sink.spills

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The destination tensors of the default sink (empty for another sink)."""
        return self.sink.tensors if isinstance(self.sink, MemorySink) else {}

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        return self.received_bytes == self.total_bytes

    def feed(self, chunk: bytes | memoryview) -> None:
        """Hand one chunk to the sink; raise CodecError if it is empty, oversized or overflows."""
        size = len(chunk)
        if size > self._max_chunk_size:
            raise CodecError(f"chunk of {size} bytes exceeds the chunk size {self._max_chunk_size}")
        if size == 0:
            raise CodecError("empty chunk")
        if self.received_bytes + size > self.total_bytes:
            raise CodecError(
                f"chunks carry more than the {self.total_bytes} bytes the header declared"
            )
        self._hash.update(chunk)
        data = memoryview(chunk).cast("B")
        position = 0
        while position < size:
            room = self._sizes[self._index] - self._offset  # 0 for an empty tensor
            take = min(room, size - position)
            if take:
                self.sink.write(self._index, self._offset, data[position : position + take])
            position += take
            self._offset += take
            if self._offset == self._sizes[self._index]:
                self._index += 1
                self._offset = 0
        self.received_bytes += size

    def finish(self, checksum: int) -> Mapping[str, torch.Tensor]:
        """Check the stream is complete and intact; return the decoded tensors by name."""
        if not self.complete:
            raise CodecError(
                f"stream ended after {self.received_bytes} of {self.total_bytes} bytes"
            )
        if int(self._hash.intdigest()) != checksum:
            raise CodecError("checksum mismatch: the tensor stream was corrupted")
        return self.sink.result()

    def discard(self) -> None:
        """Give the stream up (its sink releases what it holds)."""
        self.sink.discard()
