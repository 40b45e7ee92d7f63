"""An upload the client can continue after its connection breaks (docs/protocol.md, "Resuming").

A chunked update is kept as a ``PendingUpload`` from the moment it is queued until the next
model arrives (or the job ends): its opening SendModel and its wire tensors, which stay as they
are until then (the model's own parameters under the ``none`` codec: no copy). The server
acknowledges bytes as they arrive (``upload_ack``); a client whose session breaks names the
upload in its next Hello, and the InitConfig that answers says how many bytes the server holds.
The client then sends the rest from exactly there: the same SendModel with ``resume_offset``,
the remaining chunks, and the trailer with the checksum of the whole stream (the bytes before
the offset are hashed again, not sent: xxh3 runs at tens of GB/s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.tensor_stream import TensorStreamEncoder
from fedsilo.common.wire import CLIENT_CHUNKS, tensor_stream_frames


@dataclass
class PendingUpload:
    """A chunked update that may have to be continued on a new session."""

    round: int
    send: pb.ClientMessage  # the SendModel that opens the stream (header, never inline)
    tensors: list[torch.Tensor]  # the wire tensors, unchanged until the next model arrives
    chunk_size: int
    acked: int = 0  # the most bytes the server has acknowledged

    @property
    def total_bytes(self) -> int:
        """Bytes of the update's tensor stream."""
        return int(self.send.send_model.update.total_bytes)

    def frames(self, resume_offset: int | None = None) -> Iterator[bytes]:
        """Return the stream's frames: all of it, or from ``resume_offset`` on (resumed)."""
        send = self.send
        start = 0
        if resume_offset is not None:
            send = pb.ClientMessage()
            send.CopyFrom(self.send)
            send.send_model.resume_offset = resume_offset
            start = resume_offset
        encoder = TensorStreamEncoder(self.tensors, self.chunk_size, start=start)
        return tensor_stream_frames(send, encoder, CLIENT_CHUNKS, _trailer)

    def note_ack(self, ack: pb.UploadPosition) -> None:
        """Take an acknowledgement of this upload's bytes (others are not about it)."""
        if ack.round == self.round and self.acked <= ack.offset <= self.total_bytes:
            self.acked = ack.offset

    def position(self) -> pb.UploadPosition:
        """Where this client believes the upload stands (for its Hello)."""
        return pb.UploadPosition(round=self.round, offset=self.acked)

    def resume_offset(self, init: pb.InitConfig) -> int | None:
        """Return where InitConfig says to continue; None if the server kept nothing usable."""
        if not init.HasField("resume_upload"):
            return None
        answer = init.resume_upload
        if answer.round != self.round or not 0 <= answer.offset <= self.total_bytes:
            return None
        return int(answer.offset)


def _trailer(checksum: int) -> pb.ClientMessage:
    return pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))
