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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.tensor_stream import TensorStreamEncoder
from fedsilo.common.wire import CLIENT_CHUNKS, PROTOCOL_VERSION, Outbound, tensor_stream_frames

if TYPE_CHECKING:  # work.py imports this module
    from fedsilo.client.work import Upload

Send = Callable[[Outbound | Iterator[bytes]], None]
Record = Callable[..., None]


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

    def note_ack(self, ack: pb.StreamPosition) -> None:
        """Take an acknowledgement of this upload's bytes (others are not about it)."""
        if ack.round == self.round and self.acked <= ack.offset <= self.total_bytes:
            self.acked = ack.offset

    def position(self) -> pb.StreamPosition:
        """Where this client believes the upload stands (for its Hello)."""
        return pb.StreamPosition(round=self.round, offset=self.acked)

    def resume_offset(self, init: pb.InitConfig) -> int | None:
        """Return where InitConfig says to continue; None if the server kept nothing usable."""
        if not init.HasField("resume_upload"):
            return None
        answer = init.resume_upload
        if answer.round != self.round or not 0 <= answer.offset <= self.total_bytes:
            return None
        return int(answer.offset)


class UploadResume:
    """The client's one pending upload across its sessions (``ClientProtocol`` holds one).

    An upload is kept from when it is queued until the next model stream begins (the model's
    tensors change then, and the server keeps a broken upload only while its round is open).
    """

    def __init__(self) -> None:
        self.pending: PendingUpload | None = None

    def keep(self, upload: Upload) -> pb.ClientMessage | Iterator[bytes]:
        """Remember the update about to be queued (if chunked); return its frames to send."""
        self.pending = upload.pending
        return upload.frames

    def forget(self) -> None:
        """Drop the pending upload: a new model is coming."""
        self.pending = None

    def note_ack(self, ack: pb.StreamPosition) -> None:
        """Take an ``upload_ack`` from the server (the client table's NOTE_ACK action)."""
        if self.pending is not None:
            self.pending.note_ack(ack)

    def hello(self, name: str, job_id: int | None) -> pb.ClientMessage:
        """Return a session's Hello, naming the pending upload if there is one."""
        hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=name)
        if job_id is not None:
            hello.job_id = job_id
        if self.pending is not None:
            hello.resume_upload.CopyFrom(self.pending.position())
        return pb.ClientMessage(hello=hello)

    def continue_after(self, init: pb.InitConfig, send: Send, record: Record, log: Any) -> None:
        """After a (re)join: send the rest of the pending upload from where the server holds
        it, or forget it when the server holds none (it was delivered, or given up)."""
        pending = self.pending
        offset = pending.resume_offset(init) if pending is not None else None
        if pending is None or offset is None:
            if pending is not None:
                log.info("upload_not_resumed", round=pending.round, reason="server holds none")
            self.pending = None
            return
        record("update_resumed", round=pending.round, offset=offset)
        send(pending.frames(resume_offset=offset))
        log.info("upload_resumed", round=pending.round, offset=offset, acked=pending.acked)


def _trailer(checksum: int) -> pb.ClientMessage:
    return pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))
