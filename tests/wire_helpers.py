"""Whole-stream encode/decode in memory: for tests and tools, never for the daemons' hot paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import (
    TensorSpec,
    check_specs_match,
    header_of,
    specs_from_header,
    specs_of,
)
from fedsilo.common.tensor_stream import (
    DEFAULT_CHUNK_SIZE,
    TensorStreamDecoder,
    TensorStreamEncoder,
)


def header_of_state(state: Mapping[str, torch.Tensor]) -> pb.TensorStreamHeader:
    """Return the stream header of ``state``."""
    return header_of(specs_of(state))


def encode_state(
    state: Mapping[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[pb.TensorStreamHeader, list[bytes], int]:
    """Encode a whole state dict in memory: (header, chunks, checksum). For tests and tools."""
    header = header_of(specs_of(state))
    encoder = TensorStreamEncoder(list(state.values()), chunk_size)
    chunks = [b"".join(parts) for parts in encoder]
    return header, chunks, encoder.checksum


def decode_state(
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
