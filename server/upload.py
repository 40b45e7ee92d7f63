"""One update being received: it owns its decoder and buffers until they are folded or given back.

Two shapes, chosen by ``Intake.begin``: *streamed* (its turn had come: each chunk is checked and
folded as it arrives, into the fold's second sum buffer; the trailer's checks commit it) or
*held* (it waits for its turn in memory or in a spill file; the trailer's checks hand it to the
fold, which folds it when its turn comes). ``feed`` and the checks of ``finish`` run on the
session's reader thread without the job's condition; every change to the round and the registry
happens under it, in one critical section.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

import structlog
import torch

from fedsilo.common import compression
from fedsilo.common.errors import CodecError, ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.tensor_stream import TensorStreamDecoder
from fedsilo.server import messages, metrics
from fedsilo.server.aggregation import StreamedFold
from fedsilo.server.fold_sink import FoldSink
from fedsilo.server.job_state import Round
from fedsilo.server.registry import Member, Stage
from fedsilo.server.validation import bound_update, check_magnitude, magnitude_limit

if TYPE_CHECKING:
    from fedsilo.server.intake import Intake

Log = structlog.typing.FilteringBoundLogger

# The server acknowledges an upload's bytes every this many (docs/protocol.md, "Resuming").
ACK_BYTES = 8 << 20


class UploadRefusedError(ProtocolError):
    """An update the round does not take; the session swallows the rest of its stream."""

    def __init__(
        self, code: int, message: str, *, leaves_round: bool, tell_client: bool = True
    ) -> None:
        super().__init__(code, message)
        # True when the client's work for its round is over (its session goes idle); False
        # when the update was merely out of place and the session stays where it was.
        self.leaves_round = leaves_round
        # False for an update that came too late: the client did nothing wrong.
        self.tell_client = tell_client


class Upload:
    """One client's update for one round, from its SendModel to its fold."""

    def __init__(
        self,
        intake: Intake,
        *,
        member: Member,
        current: Round,
        send: pb.SendModel,
        decoder: TensorStreamDecoder,
        weight: float,
        stream: StreamedFold | None,
        log: Log,
    ) -> None:
        self._intake = intake
        self._member = member
        self._round = current
        self.client_id = member.client_id
        self.round = send.round
        self.examples = send.train_examples
        self.weight = weight
        self.metrics = send.metrics
        self._decoder: TensorStreamDecoder | None = decoder
        self._stream = stream
        self._log = log
        self.started = time.monotonic()
        self.nbytes = 0
        # What the base weight was divided by (FedNova's a_i; 1 otherwise).
        self.normalizer = intake.checks.weight(send)[1]
        self.send = send  # its SendModel, against which a resumed one is checked
        self.chunked = not send.update.HasField("inline")
        self._next_ack = ACK_BYTES
        # Where the bytes go: "streamed" into the sum, "memory" or "spilled".
        self.placement = "streamed" if stream else ("spilled" if decoder.spills else "memory")

    def feed(self, data: bytes | memoryview, nbytes: int) -> None:
        """Take one chunk; a broken stream or a bad value refuses the update."""
        assert self._decoder is not None, "upload already ended"
        self.nbytes += nbytes
        try:
            self._decoder.feed(data)
        except CodecError as exc:
            self._fail(str(exc), more_frames=True)
        received = self._decoder.received_bytes
        if self.chunked and self._member.takes_acks and received >= self._next_ack:
            self._next_ack = received + ACK_BYTES
            self._member.session.send(messages.upload_ack(self.round, received))
            self._log.debug("upload_acked", round=self.round, offset=received)

    @property
    def received_bytes(self) -> int:
        """Bytes of the update's stream taken so far (where a resumed stream continues)."""
        return self._decoder.received_bytes if self._decoder is not None else 0

    @property
    def client_name(self) -> str:
        """The name of the client sending it."""
        return self._member.name

    @property
    def round_state(self) -> Round:
        """The round this update is for."""
        return self._round

    @property
    def resumable(self) -> bool:
        """Whether a broken stream of this upload may be continued: chunked and not ended."""
        return self.chunked and self._decoder is not None

    def adopt(self, member: Member, log: Log) -> None:
        """Continue on the client's new session (a resumed upload; cond held)."""
        self._member = member
        self._log = log

    def finish(self, checksum: int, nbytes: int) -> None:
        """Check the whole update and fold it (or hand it to the fold), else refuse it."""
        decoder = self._decoder
        assert decoder is not None, "upload already ended"
        self.nbytes += nbytes
        try:
            received = decoder.finish(checksum)
        except CodecError as exc:
            self._fail(str(exc), more_frames=False)
        self._decoder = None  # from here on, ``received`` is what must be given back
        if self._round.secagg is not None:
            self._masked_in()
            return
        if self._stream is not None:
            self._commit_stream(decoder)
            return
        try:
            tensors = self._checked(received)
        except CodecError as exc:
            self._intake.store.release(received, False)
            self._fail(str(exc), more_frames=False)
        self._hand_over(tensors)

    def abort(self) -> None:
        """Give the update up (its stream ended midway); the session's close drops the client."""
        if self._decoder is not None:
            self._intake.store.discard(self._decoder)
            self._decoder = None
        if self._stream is not None:
            with self._intake.state.cond:
                self._round.fold.abandon_stream(self._stream)

    # ------------------------------------------------------------------ the two shapes

    def _checked(self, received: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Expand a compressed update, check its values and apply the norm bound."""
        checks = self._intake.checks
        tensors = received
        if checks.compression.codec != "none":
            tensors = compression.decode(
                received, self._round.global_state, checks.compression, checks.update_extras
            )
            self._intake.store.release(received, False)  # the wire form is no longer needed
        check_magnitude(tensors, magnitude_limit(self._round.weight_bound))
        return bound_update(
            tensors, self._round.global_state, checks.norm_bound, checks.norm_action
        )

    def _commit_stream(self, decoder: TensorStreamDecoder) -> None:
        """The streamed update is complete and intact: check its norm, then make it the sum."""
        sink = decoder.sink
        assert isinstance(sink, FoldSink) and self._stream is not None
        bound = self._intake.checks.norm_bound
        norm = sink.norm_squared**0.5
        if bound is not None and norm > bound:
            self._fail(f"update L2 norm {norm:.4g} exceeds the bound {bound:g}", more_frames=False)
        state = self._intake.state
        with state.cond:
            if not self._still_open():
                self._round.fold.abandon_stream(self._stream)
                self._ignored()
                return
            self._record()
            self._log.debug("update_folding", round=self.round)
            self._round.fold.commit_stream(self._stream)
            self._done()
        self._received()

    def _masked_in(self) -> None:
        """A masked update is in the sum; the client owes its unmask shares later (cond)."""
        with self._intake.state.cond:
            if not self._still_open():
                self._ignored()
                return
            self._record()
            self._round.fold.submit(self.client_id, 1.0, {})  # bookkeeping: who delivered
            member = self._current_member()
            if member is not None:
                member.move(Stage.SECAGG_WAIT)  # its work goes on: the unmask stage
            self._intake.state.cond.notify_all()
        self._received()

    def _hand_over(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Give a held, checked update to the fold (which owns it from then on)."""
        with self._intake.state.cond:
            if not self._still_open():
                self._intake.store.release(tensors, False)
                self._ignored()
                return
            self._record()
            self._log.debug("update_folding", round=self.round)
            self._round.fold.submit(self.client_id, self.weight, tensors)
            self._done()
        self._received()

    # ------------------------------------------------------------------ bookkeeping (cond held)

    def _still_open(self) -> bool:
        state = self._intake.state
        return state.round is self._round and self._round.fold.is_open_for(self.client_id)

    def _current_member(self) -> Member | None:
        member = self._member
        registry = self._intake.state.registry
        return member if registry.current(member.client_id, member.session) is member else None

    def _ignored(self) -> None:
        member = self._current_member()
        if member is not None and member.work is None:
            member.move(Stage.IDLE)
            self._intake.state.cond.notify_all()
        self._log.info("update_ignored", round=self.round, reason="round closed")

    def _record(self) -> None:
        current = self._round
        current.reports[self.client_id] = metrics.ClientReport(
            client_id=self.client_id,
            name=self._member.name,
            train_examples=self.examples,
            train_loss=self.metrics.train_loss,
            train_seconds=self.metrics.train_seconds,
            bytes_down=current.bytes_down.get(self.client_id, 0),
            bytes_up=self.nbytes,
            seconds=time.monotonic() - current.started,
            dp_epsilon=messages.dp_epsilon(self.metrics),
            local_steps=self.metrics.local_steps,
            weight=self.weight,
            normalizer=self.normalizer,
        )
        if self.metrics.HasField("evaluation"):
            current.evaluations.append(
                messages.client_evaluation(self.client_id, self.metrics.evaluation)
            )

    def _done(self) -> None:
        """The update is in: the client is free in the same breath."""
        member = self._current_member()
        if member is not None:
            self._intake.state.registry.release(member)
        self._intake.state.cond.notify_all()

    def _received(self) -> None:
        self._log.info(
            "update_received",
            round=self.round,
            train_examples=self.examples,
            bytes_up=self.nbytes,
            placement=self.placement,
        )

    def _fail(self, reason: str, more_frames: bool) -> NoReturn:
        """Refuse the update: give its buffers back and drop the client from the round."""
        self.abort()
        state = self._intake.state
        with state.cond:
            member = self._current_member()
            if member is not None and state.round is self._round:
                self._intake.refuse(member, self._round, reason, more_frames, self._log)
            if member is not None and member.work is None:
                member.move(Stage.DISCARDING if more_frames else Stage.IDLE)
                state.cond.notify_all()
        self._log.warning("update_refused", round=self.round, reason=reason)
        raise UploadRefusedError(int(pb.BAD_TENSOR_STREAM), reason, leaves_round=True)
