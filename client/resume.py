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

from fedsilo.client.incoming import IncomingModel
from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import check_specs_match, specs_from_header
from fedsilo.common.tensor_stream import TensorStreamEncoder
from fedsilo.common.wire import CLIENT_CHUNKS, PROTOCOL_VERSION, Outbound, tensor_stream_frames

if TYPE_CHECKING:  # work.py imports this module
    from fedsilo.client.joined import Joined
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


class Transfers:
    """What a client's later session may continue (``ClientProtocol`` holds one of these).

    An upload is kept from when it is queued until the next model stream begins (the model's
    tensors change then, and the server keeps a broken upload only while its round is open).
    A round's model stream that a session loss broke off is kept until the next one begins:
    the model's tensors hold its first bytes and the decoder its position and running checksum.
    """

    def __init__(self) -> None:
        self.pending: PendingUpload | None = None
        self.download: IncomingModel | None = None
        self._resume_offset: int | None = None  # of the SyncModel being begun

    def keep(self, upload: Upload) -> pb.ClientMessage | Iterator[bytes]:
        """Remember the update about to be queued (if chunked); return its frames to send."""
        self.pending = upload.pending
        return upload.frames

    def set_aside(self, incoming: IncomingModel | None) -> None:
        """Keep a round's model stream that the session loss broke off."""
        self.download = incoming if incoming is not None and incoming.train is not None else None

    def note_sync(self, sync: pb.SyncModel) -> None:
        """Take the SyncModel that begins (or, with resume_offset, continues) a model stream."""
        self._resume_offset = sync.resume_offset if sync.HasField("resume_offset") else None

    def incoming(
        self,
        joined: Joined,
        header: pb.TensorStreamHeader,
        number: int,
        train: pb.TrainConfig | None,
    ) -> IncomingModel:
        """Begin receiving a model stream: a new one, or the broken download it continues.

        Raises CodecError for a header that does not fit the model, or for a continuation that
        is not of the kept download (another round, header or training, or another offset).
        """
        self.pending = None  # a new model: the last update is over, and its tensors change
        kept, self.download = self.download, None
        offset, self._resume_offset = self._resume_offset, None
        if offset is None:
            return IncomingModel.begin(
                joined.model, header, joined.job.chunk_size, number, train, joined.control
            )
        decoder = kept.decoder if kept is not None else None
        if kept is None or decoder is None or (kept.round, kept.train) != (number, train):
            raise CodecError(f"a continued model stream of round {number}, which it never began")
        specs = specs_from_header(header, decoder.total_bytes, max_tensors=len(decoder.specs))
        check_specs_match(specs, decoder.specs)
        if offset != decoder.received_bytes:
            raise CodecError(
                f"the model stream goes on at byte {offset}; this client has "
                f"{decoder.received_bytes} bytes of it"
            )
        return kept

    def note_ack(self, ack: pb.StreamPosition) -> None:
        """Take an ``upload_ack`` from the server (the client table's NOTE_ACK action)."""
        if self.pending is not None:
            self.pending.note_ack(ack)

    def hello(self, name: str, job_id: int | None) -> pb.ClientMessage:
        """Return a session's Hello, naming the pending upload if there is one."""
        hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=name)
        hello.takes_upload_acks = True
        if job_id is not None:
            hello.job_id = job_id
        if self.pending is not None:
            hello.resume_upload.CopyFrom(self.pending.position())
        if self.download is not None:
            position = pb.StreamPosition(round=self.download.round, offset=self.offset())
            hello.resume_download.CopyFrom(position)
        return pb.ClientMessage(hello=hello)

    def offset(self) -> int:
        """Bytes of the kept download taken so far."""
        return self.download.decoder.received_bytes if self.download is not None else 0

    def continue_after(self, init: pb.InitConfig, send: Send, record: Record, log: Any) -> None:
        """After a (re)join: send the rest of the pending upload from where the server holds
        it, or forget it when the server holds none (it was delivered, or given up)."""
        pending = self.pending
        if self.download is not None:
            log.info("download_resuming", round=self.download.round, offset=self.offset())
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
