"""Fold a round's updates in client-id order, whatever order they arrive in.

An update that completes before its turn waits in its own buffer; the moment every lower client
id is either folded or dropped, it is folded into the running sum and freed. The result is
therefore bit-identical to folding in sorted order, and memory holds one running sum plus the
updates that wait for their turn (the server spills those to disk: see ``server/uploads.py``).

Given a ``release`` callback, the fold owns the updates it is given: the first one folded is
scaled in place and becomes the running sum (no model-sized buffer of zeros), and every update
is handed to ``release`` once folded, with ``reuse`` saying whether its buffers are free again.

The update whose turn has come can also be folded as it streams (``begin_stream``): its blocks
are added to the running sum as they arrive, written into a second sum buffer, so that the sum
itself is untouched until the whole update has passed its checks (``commit_stream``); a refused
one leaves no trace (``abandon_stream``). Same additions in the same order: the same bits.
Not thread-safe: the job calls it under its lock, except ``StreamedFold.add``, which the
upload's reader thread calls while it holds the only stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from fedsilo.server.strategies import fedavg


@dataclass
class _Waiting:
    weight: float
    tensors: Mapping[str, torch.Tensor]


class StreamedFold:
    """Writes ``base + weight * update`` (or ``weight * update`` first) into ``target``, by block.

    ``base`` is the running sum, only read here; ``target`` becomes the sum on commit. Blocks
    arrive in stream order from one reader thread; ``stop`` (from the job's thread) makes every
    later block a no-op, so that a stream given up never writes into buffers reused elsewhere.
    """

    def __init__(
        self,
        client_id: int,
        base: fedavg.State | None,
        target: fedavg.State,
        weight: float,
    ) -> None:
        self.client_id = client_id
        self.base = base
        self.target = target
        self.weight = weight
        self._lock = threading.Lock()
        self._alive = True

    def add(self, name: str, start: int, block: torch.Tensor) -> None:
        """Fold elements ``start .. start + len(block)`` of tensor ``name``."""
        with self._lock:
            if not self._alive:
                return
            out = self.target[name].view(-1)[start : start + block.numel()]
            values = block.to(out.dtype)
            if self.base is None:
                torch.mul(values, self.weight, out=out)
            else:
                base = self.base[name].view(-1)[start : start + block.numel()]
                torch.add(base, values, alpha=self.weight, out=out)

    def stop(self) -> None:
        """Make every later ``add`` a no-op (waits for one in progress)."""
        with self._lock:
            self._alive = False


@dataclass
class OrderedFold:
    """Running example-weighted sum of one round's updates, folded in client-id order."""

    expected: list[int]
    like: Mapping[str, torch.Tensor]
    # Keep every update (in client-id order) instead of summing: for robust strategies.
    keep_all: bool = False
    release: Callable[[Mapping[str, torch.Tensor], bool], None] | None = None
    # Model-shaped buffers in the sum's dtypes for a streamed fold (default: freshly allocated).
    sum_buffers: Callable[[], fedavg.State] | None = None
    folded: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    total_weight: float = 0.0

    def __post_init__(self) -> None:
        self.expected = sorted(set(self.expected))
        self._expected_set = set(self.expected)
        self._folded_set: set[int] = set()
        self._next = 0
        self._waiting: dict[int, _Waiting] = {}
        self._dropped_set: set[int] = set()
        self._sum: fedavg.State | None = None
        self._mean: fedavg.State | None = None
        self._kept: list[tuple[Mapping[str, torch.Tensor], float]] = []
        self._stream: StreamedFold | None = None
        self._spare_sum: fedavg.State | None = None

    @property
    def streaming(self) -> bool:
        """Whether an update is being folded as it streams."""
        return self._stream is not None

    def can_stream(self, client_id: int) -> bool:
        """Whether ``client_id``'s update may be folded as it streams: its turn, nothing kept."""
        return (
            not self.keep_all
            and self._stream is None
            and self.in_turn == client_id
            and self.is_open_for(client_id)
        )

    def begin_stream(self, client_id: int, weight: float) -> StreamedFold:
        """Start folding ``client_id``'s update as it streams (``can_stream`` must hold)."""
        if not self.can_stream(client_id):
            raise ValueError(f"client {client_id}'s update cannot be streamed into the fold now")
        if weight <= 0:
            raise ValueError("update weight must be positive")
        target, self._spare_sum = self._spare_sum, None
        if target is None:
            target = self.sum_buffers() if self.sum_buffers is not None else self._new_sum()
        self._stream = StreamedFold(client_id, self._sum, target, weight)
        return self._stream

    def commit_stream(self, stream: StreamedFold) -> None:
        """The streamed update passed its checks: its target becomes the running sum."""
        if stream is not self._stream or not self.is_open_for(stream.client_id):
            raise ValueError(f"no open stream of client {stream.client_id} to commit")
        stream.stop()
        self._stream = None
        self._spare_sum, self._sum = self._sum, stream.target
        self.total_weight += stream.weight
        self.folded.append(stream.client_id)
        self._folded_set.add(stream.client_id)
        self._next += 1
        self._advance()

    def abandon_stream(self, stream: StreamedFold) -> None:
        """Give a streamed update up: the sum is as it was; its buffer is kept for the next."""
        if stream is not self._stream:
            return
        stream.stop()
        self._stream = None
        self._spare_sum = stream.target

    def _new_sum(self) -> fedavg.State:
        return {
            name: torch.empty(t.shape, dtype=fedavg.accumulator_dtype(t.dtype))
            for name, t in self.like.items()
        }

    def is_open_for(self, client_id: int) -> bool:
        """Whether this round still takes an update from ``client_id``."""
        return (
            client_id in self._expected_set
            and client_id not in self._waiting
            and client_id not in self._dropped_set
            and client_id not in self._folded_set
        )

    def submit(self, client_id: int, weight: float, tensors: Mapping[str, torch.Tensor]) -> None:
        """Accept the update of ``client_id`` and fold everything whose turn has come."""
        if not self.is_open_for(client_id):
            raise ValueError(f"round does not take an update from client {client_id} now")
        if weight <= 0:
            raise ValueError("update weight must be positive")
        self._waiting[client_id] = _Waiting(weight, tensors)
        self._advance()

    def drop(self, client_ids: Iterable[int]) -> list[int]:
        """Give up on these clients for this round; return those that were still outstanding."""
        gone = [cid for cid in dict.fromkeys(client_ids) if self.is_open_for(cid)]
        for cid in gone:
            self._dropped_set.add(cid)
            self.dropped.append(cid)
            if self._stream is not None and self._stream.client_id == cid:
                self.abandon_stream(self._stream)
        self._advance()
        return gone

    @property
    def outstanding(self) -> list[int]:
        """Clients that have neither delivered nor been dropped."""
        return [cid for cid in self.expected if self.is_open_for(cid)]

    @property
    def in_turn(self) -> int | None:
        """The client whose update is folded next, or None once the round is complete."""
        return self.expected[self._next] if self._next < len(self.expected) else None

    @property
    def complete(self) -> bool:
        """Whether every expected client is folded or dropped."""
        return self._next == len(self.expected)

    def mean(self) -> fedavg.State:
        """Return the weighted mean of the folded updates (the round must be complete)."""
        if not self.complete:
            raise RuntimeError("round is not complete")
        if self._mean is None:
            if self._sum is None:
                raise ValueError("no update was folded in this round")
            # The sum is divided in place: it is used up here, and the mean is kept.
            self._mean = fedavg.weighted_mean(self._sum, self.total_weight, self.like)
            self._sum = None
        return self._mean

    def collected(self) -> tuple[list[Mapping[str, torch.Tensor]], list[float]]:
        """Return every folded update and its weight, in client-id order (``keep_all`` only)."""
        if not self.keep_all:
            raise RuntimeError("updates were summed, not kept")
        if not self.complete:
            raise RuntimeError("round is not complete")
        return [t for t, _ in self._kept], [w for _, w in self._kept]

    def discard(self) -> None:
        """Release every update still held (kept or waiting): the round is over or abandoned."""
        if self._stream is not None:
            self.abandon_stream(self._stream)
        held = [t for t, _ in self._kept] + [w.tensors for w in self._waiting.values()]
        self._kept.clear()
        self._waiting.clear()
        spare, self._spare_sum = self._spare_sum, None
        if self.release is not None:
            for tensors in held:
                self.release(tensors, False)
            if spare is not None:
                self.release(spare, True)  # a sum buffer: free for the next round

    def _advance(self) -> None:
        while self._next < len(self.expected):
            cid = self.expected[self._next]
            if cid in self._dropped_set:
                self._next += 1
            elif cid in self._waiting:
                update = self._waiting.pop(cid)
                owned = self.release is not None
                if self.keep_all:
                    self._kept.append((update.tensors, update.weight))
                elif self._sum is None:
                    self._sum = fedavg.start_sum(update.tensors, update.weight, owned=owned)
                    if self.release is not None:
                        self.release(update.tensors, False)  # its buffers are the sum now
                else:
                    fedavg.fold(self._sum, update.tensors, update.weight)
                    if self.release is not None:
                        self.release(update.tensors, True)
                self.total_weight += update.weight
                self.folded.append(cid)
                self._folded_set.add(cid)
                self._next += 1
            else:
                return
