"""Whole-stream encode/decode in memory: for tests and tools, never for the daemons' hot paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedsilo.common import codec
from fedsilo.common.proto import federation_pb2 as pb

encode_state = codec.encode_state
decode_state = codec.decode_state


def header_of_state(state: Mapping[str, torch.Tensor]) -> pb.TensorStreamHeader:
    """Return the stream header of ``state``."""
    return codec.header_of(codec.specs_of(state))


__all__ = ["Sequence", "decode_state", "encode_state", "header_of_state"]
