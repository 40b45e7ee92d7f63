"""Run an iterator on a producer thread, a bounded number of items ahead of its consumer.

A masked upload is made (quantize, add the masks) and sent chunk by chunk; run in sequence on
gRPC's request thread, each chunk's masking waits for the previous chunk's send and the other
way round. The expensive parts (AES-CTR through ``cryptography``, numpy's ufuncs) release the
GIL, so a producer thread masks chunk k+1 while chunk k is on the wire.

Threading: one producer thread per call, started on the first ``next``; it owns ``items`` (it
alone advances and closes it). The consumer owns the queue's far end. Closing the returned
generator (or dropping it) sets ``stop``; the producer notices within ``POLL`` seconds (or once
the item it is making is done), closes ``items`` and ends; the consumer joins it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
POLL = 0.05  # seconds between a blocked producer's looks at ``stop``


class _End:
    """The producer ran ``items`` to its end."""


class ProducerStoppedError(RuntimeError):
    """The producer thread ended without finishing ``items`` (an exception beyond Exception)."""


def run_ahead(items: Iterator[T], depth: int, name: str = "run-ahead") -> Iterator[T]:
    """Yield ``items`` in order, made by a producer thread up to ``depth`` items ahead.

    An exception raised by ``items`` is raised here, after the items made before it.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    slots: queue.Queue[T | _End | BaseException] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, slots, stop), name=name, daemon=True)
    thread.start()
    try:
        while True:
            entry = slots.get()
            if isinstance(entry, _End):
                return
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        thread.join()


def _produce(
    items: Iterator[T], slots: queue.Queue[T | _End | BaseException], stop: threading.Event
) -> None:
    last: _End | BaseException = ProducerStoppedError("the producer thread stopped early")
    try:
        for item in items:
            if not _put(slots, item, stop):
                return
        last = _End()
    except Exception as exc:  # handed to the consumer, which raises it
        last = exc
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        _put(slots, last, stop)


def _put(
    slots: queue.Queue[T | _End | BaseException],
    entry: T | _End | BaseException,
    stop: threading.Event,
) -> bool:
    """Queue ``entry`` unless the consumer stops first; whether it was queued."""
    while not stop.is_set():
        try:
            slots.put(entry, timeout=POLL)
            return True
        except queue.Full:
            continue
    return False
