"""One client's stream on the server: turns its messages into state-machine events.

The session owns the per-stream protocol state and the tensor decoder of an upload in progress;
everything job-wide (who is in the round, the running sum, metrics) belongs to the Job, which
the session calls. Each event is looked up in the transition table; an illegal one is answered
with an Error on this stream only. Errors before the client is admitted also close the stream.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog

from fedsilo.common import codec
from fedsilo.common.errors import CodecError, ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import Inbound, ModelFrames, Outbound, RawChunk
from fedsilo.server.state_machine import (
    Event,
    SessionState,
    illegal_code,
    transition,
)
from fedsilo.server.validation import check_finite

if TYPE_CHECKING:
    from fedsilo.server.job import Job


class _Close:
    """Marker put in an outbox to end the stream."""


CLOSE = _Close()


class OutgoingModel:
    """A model stream queued for one client: its opening message, then the model's frames.

    It holds a reservation on the frames' tensors from creation until it has been sent or
    abandoned, so that the job knows when the model's memory is free to reuse. Iterate once.
    """

    def __init__(self, opening: bytes, frames: ModelFrames) -> None:
        self.opening = opening
        self.frames = frames
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
            yield from self.frames
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


class StreamRefusedError(ProtocolError):
    """A tensor stream that is refused; the session discards it up to its trailer."""

    def __init__(
        self,
        code: int,
        message: str,
        resume: SessionState,
        discard: bool = True,
        tell_client: bool = True,
    ) -> None:
        super().__init__(code, message)
        self.resume = resume
        self.discard = discard  # False once the stream's trailer has arrived
        # False for an update that merely came too late: the client did nothing wrong.
        self.tell_client = tell_client


@dataclass
class Upload:
    """An update being received: its SendModel fields and its decoder."""

    round: int
    train_examples: int
    metrics: pb.LocalMetrics
    decoder: codec.TensorStreamDecoder
    started: float
    nbytes: int


class ClientSession:
    """The server side of one client's Session stream."""

    def __init__(
        self,
        job: Job,
        peer: str,
        cancel: Callable[[], object] = lambda: None,
        certificate_name: str | None = None,
    ) -> None:
        self.job = job
        self.peer = peer
        self.certificate_name = certificate_name  # verified by mutual TLS, None in plaintext
        self._cancel = cancel
        self.last_progress = time.monotonic()  # last message in or frame out
        self.downloading = False  # a model stream is queued or being sent
        self.outbox: queue.SimpleQueue[OutboxItem] = queue.SimpleQueue()
        self.state = SessionState.CONNECTED
        self.client_id: int | None = None
        self.name: str | None = None
        self.round = 0  # round this session was last synced for
        self.upload: Upload | None = None
        self._resume = SessionState.IDLE
        self._lock = threading.RLock()
        self.log: structlog.typing.FilteringBoundLogger = job.log.bind(peer=peer)

    # ------------------------------------------------------------------ inbound

    def handle(self, inbound: Inbound[pb.ClientMessage]) -> None:
        """Process one received message (called by the stream's reader thread)."""
        self.touch()
        message = inbound.message
        if isinstance(message, RawChunk):
            kind: str | None = "chunk"
            payload: Any = message.data
        else:
            kind = message.WhichOneof("body") if message is not None else None
            payload = getattr(message, kind) if kind is not None else None
            if kind == "chunk":
                payload = payload.data
        if message is None or kind is None:
            self._send_error(int(pb.MALFORMED_MESSAGE), "message does not parse as ClientMessage")
            if self.state is SessionState.CONNECTED:
                self.close()
            return
        try:
            self.dispatch(Event(kind), payload, inbound.nbytes)
            if kind == "send_model" and payload.update.HasField("inline"):
                self._receive_inline(payload.update.inline)
        except Exception:
            self.log.exception("session_internal_error", message_kind=kind)
            self._send_error(int(pb.INTERNAL), "internal server error; see the server log")
            self.close()

    def _receive_inline(self, inline: pb.InlineTensors) -> None:
        """An update that came whole in its SendModel: its chunk and trailer, as if streamed."""
        with self._lock:
            if self.state is not SessionState.UPLOADING:
                return  # the SendModel was refused
            if inline.data:
                self.dispatch(Event.CHUNK, inline.data)
            self.dispatch(Event.TRAILER, pb.TensorStreamTrailer(checksum=inline.checksum))

    def dispatch(self, event: Event, payload: Any = None, nbytes: int = 0) -> None:
        """Apply one event through the transition table, under the session lock."""
        with self._lock:
            step = transition(self.state, event)
            if step is None:
                self._refuse_illegal(event)
                return
            action, next_state = step
            try:
                getattr(self, f"_do_{action.value}")(payload, nbytes)
            except StreamRefusedError as refused:
                if refused.tell_client:
                    self._send_error(refused.code, refused.message)
                self._resume = refused.resume
                self._refuse_stream(refused.discard)
                return
            except ProtocolError as error:
                self._send_error(error.code, error.message)
                if self.state is SessionState.CONNECTED:
                    self.close()
                return
            self.state = self._resume if next_state is None else next_state
            if self.state is SessionState.IDLE:
                # Only now does the job count this client as ready for work: tell it so, or a
                # coordinator that looked a moment earlier would sleep until its deadline.
                self.job.session_idle()

    def offer(self, event: Event, payload: Any) -> bool:
        """Apply a job-side event (SYNC, EVALUATE) if legal now; return False if it is not."""
        with self._lock:
            step = transition(self.state, event)
            if step is None:
                return False
            action, next_state = step
            getattr(self, f"_do_{action.value}")(payload, 0)
            self.state = self._resume if next_state is None else next_state
            return True

    def _refuse_stream(self, discard: bool) -> None:
        """Move to DISCARDING (through the table) to swallow the rest of a refused stream."""
        if not discard:
            self.state = self._resume
            return
        step = transition(self.state, Event.REFUSE_STREAM)
        if step is not None:
            self.state = step[1] or self._resume

    def _refuse_illegal(self, event: Event) -> None:
        code = illegal_code(self.state, event)
        self._send_error(code, f"{event.value} is not allowed while {self.state.value}")
        if self.state is SessionState.CONNECTED:
            self.close()
        elif event is Event.SEND_MODEL:
            # Swallow the tensor stream this SendModel opens, instead of one error per chunk.
            self._resume = self.state
            self._refuse_stream(discard=True)

    # ------------------------------------------------------------------ actions

    def _do_admit(self, hello: pb.Hello, nbytes: int) -> None:
        self.client_id, init = self.job.admit(self, hello)
        self.name = hello.client_name
        self.log = self.log.bind(client_id=self.client_id, client=self.name)
        self.send(init)

    def _do_mark_ready(self, ready: pb.Ready, nbytes: int) -> None:
        self.job.mark_ready(self, ready)

    def _do_send_sync(self, work: tuple[int, OutgoingModel], nbytes: int) -> None:
        self.round, stream = work
        self.downloading = True
        self.touch()
        self.send(stream)

    def _do_send_evaluate(self, work: tuple[int, OutgoingModel], nbytes: int) -> None:
        self.downloading = True
        self.touch()
        self.send(work[1])

    def _do_begin_upload(self, send: pb.SendModel, nbytes: int) -> None:
        assert self.client_id is not None
        status = self.job.update_status(self.client_id, send.round, self.round)
        if status == "late":
            self.log.info(
                "update_ignored", round=send.round, reason="round closed or already counted"
            )
            raise StreamRefusedError(
                int(pb.WRONG_ROUND),
                f"round {send.round} is already closed",
                SessionState.IDLE,
                tell_client=False,
            )
        if status == "wrong":
            raise StreamRefusedError(
                int(pb.WRONG_ROUND),
                f"update for round {send.round}, expected round {self.round}",
                self.state,
            )
        try:
            specs = codec.specs_from_header(
                send.update, self.job.wire_bytes, max_tensors=len(self.job.wire_specs)
            )
            codec.check_specs_match(specs, self.job.wire_specs)
        except CodecError as exc:
            self.job.reject_update(self, send.round, str(exc))
            raise StreamRefusedError(
                int(pb.BAD_TENSOR_STREAM), str(exc), SessionState.IDLE
            ) from exc
        if send.train_examples == 0:
            self.job.reject_update(self, send.round, "update with 0 training examples")
            raise StreamRefusedError(
                int(pb.BAD_TENSOR_STREAM),
                "update weight train_examples must be > 0",
                SessionState.IDLE,
            )
        decoder = self.job.upload_decoder(self, specs, send.round)
        self.log.debug(
            "upload_started",
            round=send.round,
            total_bytes=send.update.total_bytes,
            spilled=decoder.spills,
        )
        self.upload = Upload(
            round=send.round,
            train_examples=send.train_examples,
            metrics=send.metrics,
            decoder=decoder,
            started=time.monotonic(),
            nbytes=nbytes,
        )

    def _do_receive_chunk(self, data: bytes | memoryview, nbytes: int) -> None:
        assert self.upload is not None
        try:
            self.upload.decoder.feed(data)
        except CodecError as exc:
            self._fail_upload(str(exc))
        self.upload.nbytes += nbytes

    def _do_finish_upload(self, trailer: pb.TensorStreamTrailer, nbytes: int) -> None:
        upload = self.upload
        assert upload is not None
        upload.nbytes += nbytes
        try:
            received = upload.decoder.finish(trailer.checksum)
        except CodecError as exc:
            self._fail_upload(str(exc), discard_rest=False)
            return
        try:
            tensors = self.job.expand_update(received)
            if tensors is not received:
                self.job.uploads.release(received, False)  # the wire form is no longer needed
            check_finite(tensors)
            tensors = self.job.bound_update(tensors)
        except CodecError as exc:
            self.job.uploads.release(received, False)
            self._fail_upload(str(exc), discard_rest=False)
            return
        self.upload = None
        self.job.submit_update(self, upload, tensors)

    def _fail_upload(self, reason: str, discard_rest: bool = True) -> None:
        upload = self.upload
        assert upload is not None
        self.upload = None
        self.job.uploads.discard(upload.decoder)
        self.job.reject_update(self, upload.round, reason)
        if discard_rest:
            raise StreamRefusedError(int(pb.BAD_TENSOR_STREAM), reason, SessionState.IDLE)
        raise StreamRefusedError(int(pb.BAD_TENSOR_STREAM), reason, SessionState.IDLE, discard_rest)

    def _do_record_evaluation(self, result: pb.EvalResult, nbytes: int) -> None:
        self.job.record_final_evaluation(self, result)

    def _do_start_discard(self, payload: Any, nbytes: int) -> None:
        return None

    def _do_discard_chunk(self, data: bytes | memoryview, nbytes: int) -> None:
        return None

    def _do_end_discard(self, trailer: pb.TensorStreamTrailer, nbytes: int) -> None:
        return None

    def _do_log_peer_error(self, error: pb.Error, nbytes: int) -> None:
        self.log.warning(
            "client_reported_error", code=pb.ErrorCode.Name(error.code), message=error.message[:500]
        )

    def _do_nothing(self, payload: Any, nbytes: int) -> None:
        return None

    def _do_drop(self, payload: Any, nbytes: int) -> None:
        if self.upload is not None:
            self.job.uploads.discard(self.upload.decoder)
        self.upload = None
        self.job.session_closed(self)

    # ------------------------------------------------------------------ outbound

    def send(self, item: Outbound | OutgoingModel) -> None:
        """Queue a message, a prebuilt frame or a model stream to go out in order."""
        self.outbox.put(item)

    def close(self) -> None:
        """End the stream after what is already queued."""
        self.outbox.put(CLOSE)

    def touch(self) -> None:
        """Record progress: a message arrived or a frame went out."""
        self.last_progress = time.monotonic()

    def cut_off(self) -> None:
        """Cancel the stream now, even if a write to it is blocked (a stalled or replaced peer)."""
        self.close()
        self._cancel()

    @property
    def phase(self) -> str:
        """Where in a round this client is: download, training, upload, or the session state."""
        if self.state is SessionState.TRAINING:
            return "download" if self.downloading else "training"
        if self.state is SessionState.UPLOADING:
            return "upload"
        return str(self.state.value)

    def disconnect(self) -> None:
        """Record that the stream is gone (reader ended, client hung up or was cut off)."""
        with self._lock:
            if self.state is not SessionState.CLOSED:
                self.dispatch(Event.DISCONNECT)
        self.close()

    def _send_error(self, code: int, message: str) -> None:
        self.log.warning(
            "protocol_error", code=pb.ErrorCode.Name(code), message=message, state=self.state.value
        )
        self.send(
            pb.ServerMessage(error=pb.Error(code=cast("pb.ErrorCode", code), message=message))
        )
