"""Where a round's uploads land: folded as they stream, in memory, on disk, or waiting in line.

Updates are folded in client-id order (``server/aggregation.py``). The upload whose turn has
come is folded as it streams (``server/fold_sink.py``): no buffer of its own, no disk. One that
arrives before its turn waits: in memory while all such together fit in
``WAITING_IN_MEMORY_BYTES``, else in a spill file while spilled bytes fit the job's disk
budget, else its stream is not read until its turn comes (the client's sends block on gRPC's
flow control). The result is bit-identical either way.

Memory is the global model, the running sum, a second sum buffer for the streamed fold, and at
most ``WAITING_IN_MEMORY_BYTES`` of waiting updates. The store keeps up to two model-shaped sets
of buffers that nothing uses any more (the previous global model, a sum buffer left over) for
the next round, so steady rounds decode and sum into memory that is already mapped.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedsilo.common.specs import TensorSpec, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder
from fedsilo.server.spill import SpilledTensors, SpillSink
from fedsilo.server.validation import ClippedUpdate

SPILL_SUFFIX = ".upload"
WAITING_IN_MEMORY_BYTES = 64 << 20
SPARE_SETS = 2  # a streamed fold needs two sum buffers; the model itself is the third
UNLIMITED = 1 << 62


class UploadStore:
    """Makes the decoder of each upload and takes updates back once they are folded."""

    def __init__(self, spill_dir: Path, chunk_size: int, spill_budget: int = UNLIMITED) -> None:
        self.spill_dir = spill_dir
        self._chunk_size = chunk_size
        self._spill_budget = spill_budget
        self._spares: list[dict[str, torch.Tensor]] = []
        self._recycled: dict[str, torch.Tensor] | None = None  # the one previous model kept
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._waiting_bytes = 0
        self._spilled_bytes = 0
        self._budgeted: dict[int, int] = {}  # id of a waiting update's tensors -> its bytes
        self.clear()

    @property
    def spilled_bytes(self) -> int:
        """Bytes of waiting uploads on disk now."""
        with self._lock:
            return self._spilled_bytes

    def decoder(
        self, specs: Sequence[TensorSpec], in_turn: bool, label: str
    ) -> TensorStreamDecoder:
        """Return the decoder of a held upload: into memory if ``in_turn``, else a waiting one
        (raises when the spill budget is full: ask ``waiting_decoder`` to be told instead)."""
        if in_turn:
            spare = self._take_spare(list(specs))
            return TensorStreamDecoder(specs, into=spare, max_chunk_size=self._chunk_size)
        decoder = self.waiting_decoder(specs, label)
        if decoder is None:
            raise RuntimeError("the spill budget is full")
        return decoder

    def waiting_decoder(
        self, specs: Sequence[TensorSpec], label: str
    ) -> TensorStreamDecoder | None:
        """Return the decoder of an upload that waits for its turn: in memory within the budget
        of waiting updates, else into a file within the spill budget; None when both are full."""
        nbytes = sum(spec.nbytes for spec in specs)
        with self._lock:
            fits = self._waiting_bytes + nbytes <= WAITING_IN_MEMORY_BYTES
            if fits:
                self._waiting_bytes += nbytes
            spills = not fits and self._spilled_bytes + nbytes <= self._spill_budget
            if spills:
                self._spilled_bytes += nbytes
        if fits:
            decoder = TensorStreamDecoder(specs, max_chunk_size=self._chunk_size)
            with self._lock:
                self._budgeted[id(decoder.tensors)] = nbytes
            return decoder
        if not spills:
            return None
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{label}-{next(self._serial)}{SPILL_SUFFIX}"
        sink = SpillSink(path, specs, on_remove=lambda: self._unspill(nbytes))
        return TensorStreamDecoder(specs, max_chunk_size=self._chunk_size, sink=sink)

    def sum_buffers(
        self, like: Mapping[str, torch.Tensor], dtypes: Mapping[str, torch.dtype]
    ) -> dict[str, torch.Tensor]:
        """Return buffers shaped like ``like`` in ``dtypes``: a spare set, else new ones."""
        wanted = [TensorSpec(name, dtypes[name], tuple(t.shape)) for name, t in like.items()]
        spare = self._take_spare(wanted)
        if spare is not None:
            return spare
        return {spec.name: torch.empty(spec.shape, dtype=spec.dtype) for spec in wanted}

    def release(self, tensors: Mapping[str, torch.Tensor], reuse: bool) -> None:
        """Take back a decoded update: delete its spill file, or keep its buffers if ``reuse``."""
        if isinstance(tensors, ClippedUpdate):
            tensors = tensors.update
        if isinstance(tensors, SpilledTensors):
            tensors.remove()
            return
        self._unbudget(tensors)
        if reuse and tensors:
            self._keep_spare(dict(tensors))

    def discard(self, decoder: TensorStreamDecoder) -> None:
        """Give up an upload that will not complete (a broken stream, a dropped client)."""
        self._unbudget(decoder.tensors)
        decoder.discard()

    def recycle(
        self, tensors: Mapping[str, torch.Tensor], in_use: Mapping[str, torch.Tensor]
    ) -> bool:
        """Keep a model nothing reads any more as the next uploads' buffers; return if kept.

        Refused when a previous model is still kept (one at most), when both spare slots are
        taken, or when a tensor shares memory with ``in_use``.
        """
        busy = {tensor.data_ptr() for tensor in in_use.values()}
        if any(tensor.data_ptr() in busy for tensor in tensors.values()):
            return False
        with self._lock:
            if self._recycled is not None and any(s is self._recycled for s in self._spares):
                return False
        kept = dict(tensors)
        if not self._keep_spare(kept):
            return False
        with self._lock:
            self._recycled = kept
        return True

    def clear(self) -> None:
        """Delete every spill file (left by a crash, or by a round that was abandoned)."""
        if self.spill_dir.is_dir():
            for path in self.spill_dir.glob(f"*{SPILL_SUFFIX}"):
                path.unlink(missing_ok=True)

    def _take_spare(self, specs: list[TensorSpec]) -> dict[str, torch.Tensor] | None:
        with self._lock:
            for index, spare in enumerate(self._spares):
                if specs_of(spare) == specs:
                    if spare is self._recycled:
                        self._recycled = None
                    return self._spares.pop(index)
        return None  # e.g. a compressed upload: its wire tensors are shaped otherwise

    def _keep_spare(self, tensors: dict[str, torch.Tensor]) -> bool:
        with self._lock:
            if len(self._spares) >= SPARE_SETS:
                return False
            self._spares.append(tensors)
            return True

    def _unbudget(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with self._lock:
            self._waiting_bytes -= self._budgeted.pop(id(tensors), 0)

    def _unspill(self, nbytes: int) -> None:
        with self._lock:
            self._spilled_bytes -= nbytes
