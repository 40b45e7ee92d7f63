"""Fold an update into the round's sum as its chunks arrive: no model-sized buffer, no disk.

A ``FoldSink`` is the tensor-stream sink of the upload whose turn has come. Each chunk's bytes
are copied into a chunk-sized scratch buffer, read as the tensor's dtype, checked (finite, within
the magnitude bound that keeps the float32 sum finite) and handed to the round's ``StreamedFold``,
which writes ``sum + weight * block`` into the second sum buffer. With a norm bound, the sink also
accumulates ``||update - global||^2``; the bound is checked once the stream is complete, before
the fold commits, so a refused update never reaches the sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import TensorSpec, byte_view
from fedsilo.server.aggregation import StreamedFold
from fedsilo.server.strategies.fedavg import accumulator_dtype


class FoldSink:
    """A tensor-stream sink that checks each block and folds it into the round's sum."""

    spills = False

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        stream: StreamedFold,
        *,
        max_chunk_size: int,
        magnitude_limit: float,
        reference: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._specs = list(specs)
        self._stream = stream
        self._limit = magnitude_limit
        self._reference = reference  # the round's global model, when the norm is measured
        # The longest element is 16 bytes (complex128): room for a chunk plus a carried part.
        self._scratch = torch.empty(max_chunk_size + 16, dtype=torch.uint8)
        self._scratch_bytes = byte_view(self._scratch)
        self._carry = b""  # the start of an element that the previous chunk cut
        self.norm_squared = 0.0

    def write(self, index: int, offset: int, data: memoryview) -> None:
        """Read the bytes as elements of tensor ``index``, check them and fold them."""
        spec = self._specs[index]
        itemsize = spec.dtype.itemsize
        carried = len(self._carry)
        size = carried + len(data)
        usable = size - size % itemsize
        if carried:
            self._scratch_bytes[:carried] = np.frombuffer(self._carry, dtype=np.uint8)
        self._scratch_bytes[carried:size] = np.frombuffer(data, dtype=np.uint8)
        self._carry = bytes(self._scratch_bytes[usable:size])
        if usable:
            start = (offset - carried) // itemsize
            block = self._scratch[:usable].view(spec.dtype)
            self._fold(spec, start, block)

    def _fold(self, spec: TensorSpec, start: int, block: torch.Tensor) -> None:
        values = block.to(accumulator_dtype(spec.dtype))
        if spec.dtype.is_floating_point or spec.dtype.is_complex:
            if not bool(values.abs().le(self._limit).all()):  # NaN compares False too
                raise CodecError(
                    f"tensor {spec.name!r} holds NaN or infinite values, or values "
                    f"beyond {self._limit:.3g} in magnitude"
                )
            # The norm is the change to the model: extras (SCAFFOLD's dc) are not in it.
            reference = self._reference
            if reference is not None and spec.dtype.is_floating_point and spec.name in reference:
                base = reference[spec.name].reshape(-1)[start : start + values.numel()]
                delta = values.double() - base.double()
                self.norm_squared += float(torch.dot(delta, delta))
        self._stream.add(spec.name, start, values)

    def result(self) -> Mapping[str, torch.Tensor]:
        """Nothing to hand over: the update is already in the stream's sum buffer."""
        return {}

    def discard(self) -> None:
        """Nothing to release here: the intake abandons the stream."""
