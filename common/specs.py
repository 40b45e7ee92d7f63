"""What a tensor stream carries: the spec (name, dtype, shape) of each tensor, and its header.

A stream's header lists every tensor's name, wire dtype name, shape and byte length; a receiver
checks it against the model it expects before a single byte is used. Wire dtype names are
torch's own names without ``torch.``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.text import shown

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
    raise ImportError("fedsilo's tensor streams assume a little-endian host")


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
            raise CodecError(f"tensor {shown(wire.name)}: unknown dtype {shown(wire.dtype)}")
        if wire.name in seen:
            raise CodecError(f"tensor {shown(wire.name)} appears twice in the header")
        seen.add(wire.name)
        if len(wire.shape) > MAX_DIMS or any(dim > MAX_DIM for dim in wire.shape):
            raise CodecError(f"tensor {shown(wire.name)}: shape {list(wire.shape)} is out of range")
        spec = TensorSpec(wire.name, DTYPES[wire.dtype], tuple(int(d) for d in wire.shape))
        if spec.nbytes != wire.nbytes:
            raise CodecError(
                f"tensor {shown(wire.name)}: header says {wire.nbytes} bytes, "
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
                f"tensor {shown(got.name)} {dtype_name(got.dtype)}{list(got.shape)} does not match "
                f"the model's {want.name!r} {dtype_name(want.dtype)}{list(want.shape)}"
            )


# dtypes numpy has: their tensors are viewed as bytes by numpy, in one torch call
NUMPY_DTYPES = frozenset(
    {
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
    }
)
# ... and those of them that can hold NaN or infinity (numpy checks them in one pass)
NUMPY_FLOATS = frozenset(d for d in NUMPY_DTYPES if d.is_floating_point or d.is_complex)


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """Return a flat uint8 numpy view sharing a contiguous CPU tensor's memory."""
    if tensor.dtype in NUMPY_DTYPES and not tensor.requires_grad:
        # numpy reshapes and reinterprets without a turn at the GIL per step (torch's do)
        return tensor.numpy().reshape(-1).view(np.uint8)
    return tensor.reshape(-1).view(torch.uint8).numpy()  # bfloat16, float8, ...
