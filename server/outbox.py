"""What a session queues for its stream's writer: messages, prebuilt frames, model streams, CLOSE.

The writer (``server/service.py``, or fl-sim's in-process link) drains a session's outbox in
order; ``OutgoingModel`` frames a model lazily from the global model's own tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

from fedsilo.common.wire import ModelFrames, Outbound


class _Close:
    """Marker put in an outbox to end the stream."""


CLOSE = _Close()


class OutgoingModel:
    """A model stream queued for one client: its opening message, then the model's frames.

    It holds a reservation on the frames' tensors from creation until it has been sent or
    abandoned, so that the job knows when the model's memory is free to reuse. Iterate once.
    """

    def __init__(self, opening: bytes, frames: ModelFrames, start: int = 0) -> None:
        self.opening = opening
        self.frames = frames
        self.start = start  # bytes of the model the client already has (a resumed download)
        self._started = False
        self._released = False
        frames.reserve()

    @property
    def nbytes(self) -> int:
        """Bytes the whole stream puts on the wire."""
        return len(self.opening) + self.frames.nbytes

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a model stream is sent once")
        self._started = True
        try:
            yield self.opening
            yield from self.frames.frames_from(self.start)
        finally:  # also when the stream is cut off and the generator closed
            self._release()

    def abandon(self) -> None:
        """Give up a stream that will not be sent (the session refused it)."""
        if not self._started:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.frames.release()


OutboxItem = Outbound | OutgoingModel | _Close
