"""Where a round's uploads land: in memory for the first to be folded, else on disk.

Updates are folded in client-id order (``server/aggregation.py``), so an update that arrives
before its turn has to wait. Holding every waiting update in memory would cost one model per
client; instead, only the upload that will be folded first (it becomes the running sum) is
decoded into memory, and every other is written straight to a spill file as its chunks arrive
and added to the sum from there, a block at a time, when its turn comes. Small updates stay in
memory while all of them together fit in ``WAITING_IN_MEMORY_BYTES`` (a file per update of a
tiny model would cost more than it saves). The result is bit-identical either way; memory stays
at the global model, the running sum and at most ``WAITING_IN_MEMORY_BYTES`` of small updates.
One set of model-shaped buffers (the previous global model's, or a small folded update's) is
kept for the next first upload, so steady rounds decode into memory that is already mapped.
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


class UploadStore:
    """Makes the decoder of each upload and takes updates back once they are folded."""

    def __init__(self, spill_dir: Path, chunk_size: int) -> None:
        self.spill_dir = spill_dir
        self._chunk_size = chunk_size
        self._spare: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._waiting_bytes = 0
        self._budgeted: dict[int, int] = {}  # id of a waiting update's tensors -> its bytes
        self.clear()

    def decoder(
        self, specs: Sequence[TensorSpec], in_turn: bool, label: str
    ) -> TensorStreamDecoder:
        """Return the decoder of a new upload: into memory if ``in_turn`` or if it fits the
        budget of waiting updates, else into a file."""
        if in_turn:
            with self._lock:
                spare, self._spare = self._spare, None
            if spare is not None and specs_of(spare) != list(specs):
                spare = None  # e.g. a compressed upload: its wire tensors are shaped otherwise
            return TensorStreamDecoder(specs, into=spare, max_chunk_size=self._chunk_size)
        nbytes = sum(spec.nbytes for spec in specs)
        with self._lock:
            fits = self._waiting_bytes + nbytes <= WAITING_IN_MEMORY_BYTES
            if fits:
                self._waiting_bytes += nbytes
        if fits:
            decoder = TensorStreamDecoder(specs, max_chunk_size=self._chunk_size)
            with self._lock:
                self._budgeted[id(decoder.tensors)] = nbytes
            return decoder
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{label}-{next(self._serial)}{SPILL_SUFFIX}"
        return TensorStreamDecoder(
            specs, max_chunk_size=self._chunk_size, sink=SpillSink(path, specs)
        )

    def release(self, tensors: Mapping[str, torch.Tensor], reuse: bool) -> None:
        """Take back a decoded update: delete its spill file, or keep its buffers if ``reuse``."""
        if isinstance(tensors, ClippedUpdate):
            tensors = tensors.update
        if isinstance(tensors, SpilledTensors):
            tensors.remove()
            return
        self._unbudget(tensors)
        if reuse:
            with self._lock:
                if self._spare is None:
                    self._spare = dict(tensors)

    def discard(self, decoder: TensorStreamDecoder) -> None:
        """Give up an upload that will not complete (a broken stream, a dropped client)."""
        self._unbudget(decoder.tensors)
        decoder.discard()

    def _unbudget(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with self._lock:
            self._waiting_bytes -= self._budgeted.pop(id(tensors), 0)

    def recycle(
        self, tensors: Mapping[str, torch.Tensor], in_use: Mapping[str, torch.Tensor]
    ) -> bool:
        """Keep a model nothing reads any more as the next upload's buffers; return if kept.

        Refused when the spare slot is taken or when a tensor shares memory with ``in_use``.
        """
        busy = {tensor.data_ptr() for tensor in in_use.values()}
        if any(tensor.data_ptr() in busy for tensor in tensors.values()):
            return False
        with self._lock:
            if self._spare is not None:
                return False
            self._spare = dict(tensors)
            return True

    def clear(self) -> None:
        """Delete every spill file (left by a crash, or by a round that was abandoned)."""
        if self.spill_dir.is_dir():
            for path in self.spill_dir.glob(f"*{SPILL_SUFFIX}"):
                path.unlink(missing_ok=True)
