"""The tensor wire codec: state dicts to chunked raw bytes and back, with no pickle anywhere.

A tensor stream is a header (name, dtype, shape, byte length of each tensor), then the raw
little-endian bytes of all tensors back to back, cut into chunks of at most ``chunk_size`` bytes
(a chunk may span tensor boundaries), then a trailer holding the xxh3-64 checksum of those bytes.

Encoding never copies a contiguous CPU tensor: chunks are memoryviews into the tensors' storage.
Decoding validates the header against the model it is meant for before a byte is used, then
copies each chunk straight into preallocated tensors.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import xxhash

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb

DEFAULT_CHUNK_SIZE = 1 << 20
MAX_DIMS = 64  # torch's own limit on tensor rank
MAX_DIM = (1 << 62) - 1  # any larger dimension cannot be allocated even when another is 0

# Every dtype that round-trips; the wire name is torch's own name without "torch.".
_DTYPE_NAMES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
]
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)
}
_DTYPE_TO_NAME = {dtype: name for name, dtype in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - no big-endian host runs torch wheels today
    raise ImportError("fedsilo's tensor codec assumes a little-endian host")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor of a model."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        """Raw byte length on the wire."""
        return self.numel * self.dtype.itemsize


def dtype_name(dtype: torch.dtype) -> str:
    """Return the wire name of a torch dtype, or raise CodecError for one the codec lacks."""
    try:
        return _DTYPE_TO_NAME[dtype]
    except KeyError:
        raise CodecError(f"dtype {dtype} is not supported on the wire") from None


def specs_of(state: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    """Describe a state dict, in its own order."""
    specs = []
    for name, tensor in state.items():
        dtype_name(tensor.dtype)
        specs.append(TensorSpec(name, tensor.dtype, tuple(tensor.shape)))
    return specs


def header_of(specs: Sequence[TensorSpec]) -> pb.TensorStreamHeader:
    """Build the wire header for a list of specs."""
    header = pb.TensorStreamHeader(total_bytes=sum(spec.nbytes for spec in specs))
    for spec in specs:
        header.tensors.add(
            name=spec.name, dtype=dtype_name(spec.dtype), shape=spec.shape, nbytes=spec.nbytes
        )
    return header


def specs_from_header(
    header: pb.TensorStreamHeader, max_total_bytes: int, max_tensors: int | None = None
) -> list[TensorSpec]:
    """Parse and check a wire header on its own: known dtypes, consistent byte counts, caps."""
    if max_tensors is not None and len(header.tensors) > max_tensors:
        raise CodecError(f"header lists {len(header.tensors)} tensors, at most {max_tensors}")
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    total = 0
    for wire in header.tensors:
        if wire.dtype not in DTYPES:
            raise CodecError(f"tensor {wire.name!r}: unknown dtype {wire.dtype!r}")
        if wire.name in seen:
            raise CodecError(f"tensor {wire.name!r} appears twice in the header")
        seen.add(wire.name)
        if len(wire.shape) > MAX_DIMS or any(dim > MAX_DIM for dim in wire.shape):
            raise CodecError(f"tensor {wire.name!r}: shape {list(wire.shape)} is out of range")
        spec = TensorSpec(wire.name, DTYPES[wire.dtype], tuple(int(d) for d in wire.shape))
        if spec.nbytes != wire.nbytes:
            raise CodecError(
                f"tensor {wire.name!r}: header says {wire.nbytes} bytes, "
                f"{wire.dtype}{list(spec.shape)} needs {spec.nbytes}"
            )
        total += spec.nbytes
        if total > max_total_bytes:
            raise CodecError(f"header declares more than the limit of {max_total_bytes} bytes")
        specs.append(spec)
    if total != header.total_bytes:
        raise CodecError(f"header total_bytes {header.total_bytes} != sum of tensors {total}")
    return specs


def check_specs_match(received: Sequence[TensorSpec], expected: Sequence[TensorSpec]) -> None:
    """Raise CodecError unless the received specs equal the model's, tensor by tensor, in order."""
    if len(received) != len(expected):
        raise CodecError(f"header has {len(received)} tensors, the model has {len(expected)}")
    for got, want in zip(received, expected, strict=True):
        if got != want:
            raise CodecError(
                f"tensor {got.name!r} {dtype_name(got.dtype)}{list(got.shape)} does not match "
                f"the model's {want.name!r} {dtype_name(want.dtype)}{list(want.shape)}"
            )


def _byte_view(tensor: torch.Tensor) -> np.ndarray:
    """Return a flat uint8 numpy view sharing a contiguous CPU tensor's memory."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _wire_ready(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor detached, on the CPU and contiguous, copying only when needed."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor.contiguous()


class TensorStreamEncoder:
    """Cut a sequence of tensors into chunks of raw bytes and checksum them.

    Iterate to get the chunks, each a list of memoryviews (one chunk may span tensors);
    ``checksum`` is valid once iteration has finished.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checksum: bool = True,
    ):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._tensors = [_wire_ready(t) for t in tensors]
        self._chunk_size = chunk_size
        self._hash = xxhash.xxh3_64() if checksum else None
        self._done = False

    @property
    def total_bytes(self) -> int:
        """Total number of raw bytes the chunks carry."""
        return sum(t.numel() * t.element_size() for t in self._tensors)

    @property
    def checksum(self) -> int:
        """The xxh3-64 of every byte yielded; only valid after the last chunk."""
        if not self._done:
            raise RuntimeError("checksum read before the stream was fully encoded")
        if self._hash is None:
            raise RuntimeError("this encoder was made with checksum=False")
        return int(self._hash.intdigest())

    def __iter__(self) -> Iterator[list[memoryview]]:
        parts: list[memoryview] = []
        room = self._chunk_size
        for tensor in self._tensors:
            view = _byte_view(tensor).data
            offset = 0
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


class TensorStreamDecoder:
    """Receive the chunks of one tensor stream into preallocated tensors, or into a file.

    ``into`` gives the destination tensors (e.g. a model's own state dict, decoded in place);
    without it, fresh tensors are allocated once from the specs. With ``spill_to``, the raw
    bytes go to that new file instead and ``finish`` returns a ``SpilledTensors`` reading them
    back one tensor at a time, so a received model need not be held in memory. Every chunk is
    bounds-checked against the header before it is used; ``finish`` checks length and checksum.
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        into: Mapping[str, torch.Tensor] | None = None,
        max_chunk_size: int = DEFAULT_CHUNK_SIZE,
        spill_to: Path | None = None,
    ) -> None:
        self.specs = list(specs)
        self.tensors: dict[str, torch.Tensor] = {}
        self._spill: BinaryIO | None = None
        self._spill_path = spill_to
        self.spills = spill_to is not None  # whether the bytes go to a file
        if spill_to is not None:
            if into is not None:
                raise ValueError("decode into tensors or spill to a file, not both")
            self._spill = open(spill_to, "xb", buffering=0)  # noqa: SIM115 - closed by finish
        for spec in self.specs if spill_to is None else ():
            if into is not None:
                target = into[spec.name]
                if not (target.device.type == "cpu" and target.is_contiguous()):
                    raise ValueError(f"tensor {spec.name!r} is not a contiguous CPU tensor")
                if (target.dtype, tuple(target.shape)) != (spec.dtype, spec.shape):
                    raise ValueError(f"tensor {spec.name!r} does not match its spec")
            else:
                target = torch.empty(spec.shape, dtype=spec.dtype)
            self.tensors[spec.name] = target
        self._views = [_byte_view(tensor) for tensor in self.tensors.values()]
        self._index = 0  # tensor being filled
        self._offset = 0  # bytes filled in that tensor
        self.received_bytes = 0
        self.total_bytes = sum(spec.nbytes for spec in self.specs)
        self._max_chunk_size = max_chunk_size
        self._hash = xxhash.xxh3_64()

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        return self.received_bytes == self.total_bytes

    def feed(self, chunk: bytes | memoryview) -> None:
        """Copy one chunk into place; raise CodecError if it is oversized or overflows."""
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
        if self._spill is not None:
            _write_all(self._spill, memoryview(chunk))
            self.received_bytes += size
            return
        source = np.frombuffer(chunk, dtype=np.uint8)
        position = 0
        while position < size:
            view = self._views[self._index]
            take = min(len(view) - self._offset, size - position)  # 0 for an empty tensor
            view[self._offset : self._offset + take] = source[position : position + take]
            position += take
            self._offset += take
            if self._offset == len(view):
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
        if self._spill is not None and self._spill_path is not None:
            self._spill.close()
            self._spill = None
            return SpilledTensors(self._spill_path, self.specs)
        return self.tensors

    def discard(self) -> None:
        """Give the stream up: close and delete its spill file, if any."""
        if self._spill is not None and self._spill_path is not None:
            self._spill.close()
            self._spill = None
            self._spill_path.unlink(missing_ok=True)


def _write_all(handle: BinaryIO, data: memoryview) -> None:
    while data:
        written = handle.write(data)
        data = data[written or 0 :]


class SpilledTensors(Mapping[str, torch.Tensor]):
    """Tensors stored back to back in a file (a spilled tensor stream), read on access.

    Each lookup reads that one tensor into a fresh tensor, so holding this costs no memory;
    ``remove`` deletes the file once the tensors are no longer needed.
    """

    def __init__(self, path: Path, specs: Sequence[TensorSpec]) -> None:
        self.path = path
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
            self._read_exactly(handle, _byte_view(tensor).data, name)
        return tensor

    def blocks(self, name: str, block_bytes: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first element, flat block) of one tensor, read a block at a time.

        Every block is read into the same buffer: use each one before asking for the next.
        """
        spec = self._specs[name]
        itemsize = spec.dtype.itemsize
        per_block = max(1, block_bytes // itemsize)
        buffer = torch.empty(min(per_block, spec.numel), dtype=spec.dtype)
        raw = _byte_view(buffer).data
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
        """Delete the file."""
        self.path.unlink(missing_ok=True)


BLOCK_BYTES = 16 << 20  # what a pass over a big tensor holds at once


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


def encode_state(
    state: Mapping[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[pb.TensorStreamHeader, list[bytes], int]:
    """Encode a whole state dict in memory: (header, chunks, checksum). For tests and tools."""
    header = header_of(specs_of(state))
    encoder = TensorStreamEncoder(list(state.values()), chunk_size)
    chunks = [b"".join(parts) for parts in encoder]
    return header, chunks, encoder.checksum


def decode_state(  # noqa: PLR0917 - mirrors the wire order: header, chunks, trailer
    header: pb.TensorStreamHeader,
    chunks: Sequence[bytes],
    checksum: int,
    expected: Sequence[TensorSpec] | None = None,
    max_chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_total_bytes: int = 1 << 40,
) -> dict[str, torch.Tensor]:
    """Decode a whole stream held in memory, checking it against ``expected`` when given."""
    specs = specs_from_header(header, max_total_bytes)
    if expected is not None:
        check_specs_match(specs, expected)
    decoder = TensorStreamDecoder(specs, max_chunk_size=max_chunk_size)
    for chunk in chunks:
        decoder.feed(chunk)
    return dict(decoder.finish(checksum))
