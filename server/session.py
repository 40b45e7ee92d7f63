"""One client's stream on the server: turns its messages into state-machine events.

The session owns the protocol state of its stream (``state``, the round it was last synced for,
the upload in progress), guarded by its own lock; everything job-wide is the job's, reached
through the narrow ``SessionJob`` interface below. Each event is looked up in the transition
table (``server/state_machine.py``); an illegal one is answered with an Error on this stream
only, and errors before the client is admitted also close the stream.

A tensor stream that fits in one chunk arrives whole in its SendModel (inline): the session
feeds it to the upload as a chunk and a trailer, exactly as if it had been streamed, and when
such a stream is refused there is nothing left to swallow.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Protocol

import structlog

from fedsilo.common.errors import ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import Inbound, Outbound, RawChunk
from fedsilo.server import messages
from fedsilo.server.outbox import CLOSE, OutboxItem, OutgoingModel
from fedsilo.server.state_machine import Event, SessionState, illegal_code, transition
from fedsilo.server.telemetry import JobTelemetry
from fedsilo.server.upload import Upload, UploadRefusedError

Log = structlog.typing.FilteringBoundLogger

# A real client errs a handful of times at most; a stream that keeps erring costs log and
# memory (each error is answered) until it is closed.
LOGGED_ERRORS = 10
LOGGED_ERRORS_EVERY = 100
MAX_ERRORS = 100


class SessionJob(Protocol):
    """What a session may ask of its job; nothing else of the job is within its reach."""

    log: Log
    telemetry: JobTelemetry

    def admit(self, session: ClientSession, hello: pb.Hello) -> tuple[int, pb.ServerMessage]:
        """Admit the client of a Hello; return its id and the InitConfig to send."""

    def ready(self, session: ClientSession, ready: pb.Ready) -> None:
        """Note that the client has loaded its task and data."""

    def begin_upload(self, session: ClientSession, send: pb.SendModel) -> Upload:
        """Open the upload a SendModel announces (raises UploadRefusedError)."""

    def stream_discarded(self, session: ClientSession) -> None:
        """Note that the rest of a refused stream has been swallowed."""

    def download_done(self, session: ClientSession) -> None:
        """Note that a model stream to the client has been written out."""

    def eval_result(self, session: ClientSession, result: pb.EvalResult) -> None:
        """Record the client's evaluation of the final model."""

    def peer_error(self, session: ClientSession, error: pb.Error) -> None:
        """Record an Error the client sent."""

    def secagg_message(self, session: ClientSession, message: Any) -> None:
        """Take a secure-aggregation stage message (raises ProtocolError when refused)."""

    def closed(self, session: ClientSession, upload: Upload | None = None) -> None:
        """Forget a session whose stream ended (with the upload it broke off, if any)."""


class Progress:
    """When a stream last moved: written by its reader and writer threads, read by the coordinator.

    Any message in or frame out counts; while an upload is open only tensor bytes do, so that a
    client cannot hold a round open with heartbeats.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = self._last_data = time.monotonic()

    def touch(self, data: bool = False) -> None:
        """Record progress (``data``: tensor bytes arrived)."""
        now = time.monotonic()
        with self._lock:
            self._last = now
            if data:
                self._last_data = now

    def idle_seconds(self, uploading: bool) -> float:
        """Seconds since the last progress (of tensor bytes, while ``uploading``)."""
        with self._lock:
            last = self._last_data if uploading else self._last
        return time.monotonic() - last


class ClientSession:
    """The server side of one client's Session stream."""

    def __init__(
        self,
        job: SessionJob,
        peer: str,
        cancel: Any = lambda: None,
        certificate_name: str | None = None,
    ) -> None:
        self.job = job
        self.peer = peer
        self.certificate_name = certificate_name  # verified by mutual TLS, None in plaintext
        self._cancel = cancel
        self._progress = Progress()
        self._ended = threading.Event()  # the writer has drained the outbox up to CLOSE
        self.outbox: queue.SimpleQueue[OutboxItem] = queue.SimpleQueue()
        self._lock = threading.RLock()
        # Guarded by _lock:
        self.state = SessionState.CONNECTED
        self.client_id: int | None = None  # set once, at admission
        self.name: str | None = None
        self.round = 0  # round this session was last synced for
        self.upload: Upload | None = None
        self._resume = SessionState.IDLE
        self._errors = 0
        self.log: Log = job.log.bind(peer=peer)

    # ------------------------------------------------------------------ inbound

    def handle(self, inbound: Inbound[pb.ClientMessage]) -> None:
        """Process one received message (called by the stream's reader thread)."""
        message = inbound.message
        if isinstance(message, RawChunk):
            kind: str | None = "chunk"
            payload: Any = message.data
        else:
            kind = message.WhichOneof("body") if message is not None else None
            payload = getattr(message, kind) if kind is not None else None
            if kind == "chunk":
                payload = payload.data
        self._progress.touch(data=kind in ("chunk", "send_model"))
        self.job.telemetry.received(self.client_id, inbound.nbytes)
        if message is None or kind is None:
            self._send_error(int(pb.MALFORMED_MESSAGE), "message does not parse as ClientMessage")
            if self.state is SessionState.CONNECTED:
                self.close()
            return
        try:
            with self._lock:
                self.dispatch(Event(kind), payload, inbound.nbytes)
                if kind == "send_model" and self.state is SessionState.UPLOADING:
                    self._receive_inline(payload)
        except Exception:
            self.log.exception("session_internal_error", message_kind=kind)
            self._send_error(int(pb.INTERNAL), "internal server error; see the server log")
            self.close()

    def _receive_inline(self, send: pb.SendModel) -> None:
        """An update that came whole in its SendModel: its chunk and trailer, as if streamed."""
        if not send.update.HasField("inline"):
            return
        inline = send.update.inline
        if inline.data:
            self.dispatch(Event.CHUNK, inline.data)
        if self.state is SessionState.UPLOADING:
            self.dispatch(Event.TRAILER, messages.inline_trailer(inline.checksum))

    def dispatch(self, event: Event, payload: Any = None, nbytes: int = 0) -> None:
        """Apply one event through the transition table, under the session lock."""
        with self._lock:
            step = transition(self.state, event)
            if step is None:
                self._refuse_illegal(event, payload)
                return
            action, next_state = step
            try:
                getattr(self, f"_do_{action.value}")(payload, nbytes)
            except UploadRefusedError as refused:
                self.job.telemetry.upload_refused(self.client_id, refused, not refused.tell_client)
                if refused.tell_client:
                    self._send_error(refused.code, refused.message)
                resume = SessionState.IDLE if refused.leaves_round else self._stay_state()
                self._refuse_stream(event, payload, resume)
                return
            except ProtocolError as error:
                self._send_error(error.code, error.message)
                if self.state is SessionState.CONNECTED:
                    self.close()
                return
            self.state = self._resume if next_state is None else next_state

    def _stay_state(self) -> SessionState:
        """The state an out-of-place stream leaves the session in: where it was before it."""
        return self.state if self.state is not SessionState.UPLOADING else SessionState.IDLE

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

    def _refuse_stream(self, event: Event, payload: Any, resume: SessionState) -> None:
        """Swallow the rest of a refused tensor stream (DISCARDING), if any of it is to come.

        A stream refused at its SendModel has more frames to come unless it was inline; one
        refused at a chunk has its trailer to come; one refused at its trailer is over.
        """
        self._resume = resume
        more_frames = event is Event.CHUNK or (
            event is Event.SEND_MODEL and not payload.update.HasField("inline")
        )
        if not more_frames:
            self.state = resume
            return
        step = transition(self.state, Event.REFUSE_STREAM)
        self.state = step[1] if step is not None and step[1] is not None else resume

    def _refuse_illegal(self, event: Event, payload: Any) -> None:
        code = illegal_code(self.state, event)
        self._send_error(code, f"{event.value} is not allowed while {self.state.value}")
        if self.state is SessionState.CONNECTED:
            self.close()
        elif event is Event.SEND_MODEL and self.state is not SessionState.DISCARDING:
            # Swallow the tensor stream this SendModel opens, instead of one error per chunk.
            self._refuse_stream(event, payload, self.state)

    # ------------------------------------------------------------------ actions

    def _do_admit(self, hello: pb.Hello, nbytes: int) -> None:
        self.client_id, init = self.job.admit(self, hello)
        self.name = hello.client_name
        self.log = self.log.bind(client_id=self.client_id, client=self.name)
        self.job.telemetry.admitted(self.client_id, self.name)
        self.send(init)

    def _do_mark_ready(self, ready: pb.Ready, nbytes: int) -> None:
        try:
            self.job.ready(self, ready)
        except ProtocolError as refused:  # it cannot take part: say why, end the stream
            self._send_error(refused.code, refused.message)
            self.close()

    def _do_send_sync(self, work: tuple[int, OutgoingModel], nbytes: int) -> None:
        self.round, stream = work
        self._progress.touch()
        self.log.debug("download_started", round=self.round)
        self.job.telemetry.download_started(self.client_id, stream)
        self.send(stream)

    def _do_send_evaluate(self, work: tuple[int, OutgoingModel], nbytes: int) -> None:
        self._progress.touch()
        self.job.telemetry.download_started(self.client_id, work[1])
        self.send(work[1])

    def _do_begin_upload(self, send: pb.SendModel, nbytes: int) -> None:
        self.upload = self.job.begin_upload(self, send)
        self.job.telemetry.upload_started(self.client_id, send.update.total_bytes)
        self.upload.nbytes += nbytes

    def _do_receive_chunk(self, data: bytes | memoryview, nbytes: int) -> None:
        assert self.upload is not None
        try:
            self.upload.feed(data, nbytes)
        except UploadRefusedError:
            self.upload = None
            raise

    def _do_finish_upload(self, trailer: pb.TensorStreamTrailer, nbytes: int) -> None:
        upload, self.upload = self.upload, None
        assert upload is not None
        upload.finish(trailer.checksum, nbytes)
        self.job.telemetry.upload_finished(self.client_id)

    def _do_record_evaluation(self, result: pb.EvalResult, nbytes: int) -> None:
        self.job.eval_result(self, result)

    def _do_start_discard(self, payload: Any, nbytes: int) -> None:
        return None

    def _do_discard_chunk(self, data: bytes | memoryview, nbytes: int) -> None:
        return None

    def _do_end_discard(self, trailer: pb.TensorStreamTrailer, nbytes: int) -> None:
        self.job.stream_discarded(self)

    def _do_record_secagg(self, message: Any, nbytes: int) -> None:
        self.job.secagg_message(self, message)

    def _do_log_peer_error(self, error: pb.Error, nbytes: int) -> None:
        self.job.telemetry.peer_error(error.code)
        self.job.peer_error(self, error)

    def _do_nothing(self, payload: Any, nbytes: int) -> None:
        return None

    def _do_drop(self, payload: Any, nbytes: int) -> None:
        upload, self.upload = self.upload, None
        self.job.telemetry.disconnected(self.client_id)
        self.job.closed(self, upload)  # which keeps a broken upload for a resume, or aborts it

    # ------------------------------------------------------------------ outbound

    def send(self, item: Outbound | OutgoingModel) -> None:
        """Queue a message, a prebuilt frame or a model stream to go out in order."""
        self.outbox.put(item)

    def close(self) -> None:
        """End the stream after what is already queued."""
        self.outbox.put(CLOSE)

    def touch(self) -> None:
        """Record progress: a frame went out (called by the stream's writer)."""
        self._progress.touch()
        self.job.telemetry.frame_sent(self.client_id)

    def model_sent(self) -> None:
        """Note that a whole model stream went out (called by the stream's writer)."""
        self.job.telemetry.download_finished(self.client_id)
        self.job.download_done(self)

    @property
    def progress(self) -> Progress:
        """When this stream last moved."""
        return self._progress

    def stream_ended(self) -> None:
        """Note that the writer sent everything up to CLOSE (called by the stream's writer)."""
        self._ended.set()

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the stream's writer has ended; return whether it did within ``timeout``."""
        return self._ended.wait(timeout)

    def cut_off(self) -> None:
        """Cancel the stream now, even if a write to it is blocked (a stalled or replaced peer)."""
        self.close()
        self._cancel()

    def disconnect(self) -> None:
        """Record that the stream is gone (reader ended, client hung up or was cut off)."""
        with self._lock:
            if self.state is not SessionState.CLOSED:
                self.dispatch(Event.DISCONNECT)
        self.close()

    def _send_error(self, code: int, message: str) -> None:
        """Answer with an Error; log the first few, and end a stream that keeps erring."""
        self._errors += 1
        if self._errors <= LOGGED_ERRORS or self._errors % LOGGED_ERRORS_EVERY == 0:
            self.log.warning(
                "protocol_error",
                code=pb.ErrorCode.Name(code),
                message=message,
                state=self.state.value,
                errors=self._errors,
            )
        if self._errors > MAX_ERRORS:
            return  # already told why it is closed
        self.job.telemetry.protocol_error(code)
        self.send(messages.error(code, message))
        if self._errors == MAX_ERRORS:
            self.send(
                messages.error(
                    int(pb.ILLEGAL_MESSAGE), f"{MAX_ERRORS} protocol errors: closing the stream"
                )
            )
            self.log.warning("session_closed_for_errors", errors=self._errors)
            self.cut_off()
