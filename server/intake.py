"""A round's intake: one ``Upload`` owns one client's update from its first frame to its fold.

    begin (SendModel: round, header, weight) -> feed (chunks) -> finish (trailer):
        decode -> expand (compression) -> finite -> norm bound -> fold -> release

``Intake.begin`` decides, under the job's condition, whether the round takes this update now;
``Upload.feed`` and the checks of ``Upload.finish`` run on the session's reader thread without
the job's condition; the fold and every change to the round and the registry happen under it,
in one critical section. Every exit (folded, refused, ignored, aborted) gives the update's
buffers back exactly once: to the fold, which owns them from then on, or to the upload store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

import structlog
import torch

from fedsilo.common import compression
from fedsilo.common.errors import CodecError, ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import TensorSpec, check_specs_match, specs_from_header
from fedsilo.common.tensor_stream import TensorStreamDecoder
from fedsilo.server import messages, metrics
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.registry import Member, SessionHandle, Stage
from fedsilo.server.uploads import UploadStore
from fedsilo.server.validation import bound_update, check_finite

Log = structlog.typing.FilteringBoundLogger


class UploadStatus(Enum):
    """Whether a round takes an update for ``round`` from a client now."""

    OPEN = "open"
    LATE = "late"  # for a round the client was in, closed or already holding its update
    WRONG = "wrong"  # for a round the client was never sent


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


@dataclass(frozen=True)
class UploadChecks:
    """What every update of this job is checked against."""

    wire_specs: list[TensorSpec]  # the tensors an update carries under the job's codec
    compression: compression.Compression
    norm_bound: float | None
    norm_action: str
    chunk_size: int

    @property
    def wire_bytes(self) -> int:
        """Bytes of an update's tensor stream."""
        return sum(spec.nbytes for spec in self.wire_specs)


def upload_status(state: JobState, client_id: int, round_number: int, synced: int) -> UploadStatus:
    """Say whether the round takes an update for ``round_number`` now (cond held)."""
    if round_number > synced or round_number == 0:
        return UploadStatus.WRONG
    current = state.round
    if (
        round_number == synced
        and current is not None
        and current.number == round_number
        and current.fold.is_open_for(client_id)
    ):
        return UploadStatus.OPEN
    return UploadStatus.LATE


class Intake:
    """Opens the uploads of the job's rounds."""

    def __init__(self, state: JobState, store: UploadStore, checks: UploadChecks) -> None:
        self.state = state
        self.store = store
        self.checks = checks

    def begin(
        self,
        member_id: int,
        session: SessionHandle,
        send: pb.SendModel,
        synced_round: int,
        log: Log,
    ) -> Upload:
        """Open the upload that ``send`` announces, or raise UploadRefusedError saying why not."""
        more_frames = not send.update.HasField("inline")
        with self.state.cond:
            member = self.state.registry.current(member_id, session)
            status = upload_status(self.state, member_id, send.round, synced_round)
            if status is UploadStatus.WRONG:
                raise UploadRefusedError(
                    int(pb.WRONG_ROUND),
                    f"update for round {send.round}, expected round {synced_round}",
                    leaves_round=False,
                )
            current = self.state.round
            if status is UploadStatus.LATE or member is None or current is None:
                if member is not None and member.work is None:
                    member.move(Stage.DISCARDING if more_frames else Stage.IDLE)
                    self.state.cond.notify_all()
                log.info("update_ignored", round=send.round, reason="round closed or counted")
                raise UploadRefusedError(
                    int(pb.WRONG_ROUND),
                    f"round {send.round} is already closed",
                    # The answer to its latest work (late) ends that work; an older one does not.
                    leaves_round=send.round == synced_round,
                    tell_client=False,
                )
            try:
                specs = specs_from_header(
                    send.update, self.checks.wire_bytes, max_tensors=len(self.checks.wire_specs)
                )
                check_specs_match(specs, self.checks.wire_specs)
                if send.train_examples == 0:
                    raise CodecError("update weight train_examples must be > 0")
            except CodecError as exc:
                self.refuse(member, current, str(exc), more_frames, log)
            member.move(Stage.UPLOAD)
            in_turn = current.fold.in_turn == member_id and not current.fold.folded
            global_state = current.global_state
        decoder = self.store.decoder(specs, in_turn, f"r{send.round}-c{member_id}")
        log.debug(
            "upload_started",
            round=send.round,
            total_bytes=send.update.total_bytes,
            spilled=decoder.spills,
        )
        return Upload(
            self,
            client_id=member_id,
            session=session,
            send=send,
            decoder=decoder,
            global_state=global_state,
            log=log,
        )

    def refuse(
        self, member: Member, current: Round, reason: str, more_frames: bool, log: Log
    ) -> NoReturn:
        """Drop the client from the round for a refused update (cond held) and raise."""
        current.drop([member.client_id], f"update refused: {reason}", {member.client_id: "upload"})
        self.state.registry.release(member, Stage.DISCARDING if more_frames else Stage.IDLE)
        self.state.cond.notify_all()
        log.warning("update_refused", round=current.number, reason=reason)
        raise UploadRefusedError(int(pb.BAD_TENSOR_STREAM), reason, leaves_round=True)


class Upload:
    """One update being received; it owns its decoder and buffers until they are folded."""

    def __init__(
        self,
        intake: Intake,
        *,
        client_id: int,
        session: SessionHandle,
        send: pb.SendModel,
        decoder: TensorStreamDecoder,
        global_state: Mapping[str, torch.Tensor],
        log: Log,
    ) -> None:
        self._intake = intake
        self.client_id = client_id
        self._session = session
        self.round = send.round
        self.weight = send.train_examples
        self.metrics = send.metrics
        self._decoder: TensorStreamDecoder | None = decoder
        self._global_state = global_state
        self._log = log
        self.started = time.monotonic()
        self.nbytes = 0

    def feed(self, data: bytes | memoryview, nbytes: int) -> None:
        """Take one chunk; a broken stream refuses the update (UploadRefusedError)."""
        assert self._decoder is not None, "upload already ended"
        self.nbytes += nbytes
        try:
            self._decoder.feed(data)
        except CodecError as exc:
            self._fail(str(exc), more_frames=True)

    def finish(self, checksum: int, nbytes: int) -> None:
        """Check the whole update and fold it, or raise UploadRefusedError."""
        decoder = self._decoder
        assert decoder is not None, "upload already ended"
        self.nbytes += nbytes
        try:
            received = decoder.finish(checksum)
        except CodecError as exc:
            self._fail(str(exc), more_frames=False)
        self._decoder = None  # from here on, ``received`` is what must be given back
        try:
            tensors = self._expand(received)
            check_finite(tensors)
            tensors = bound_update(
                tensors,
                self._global_state,
                self._intake.checks.norm_bound,
                self._intake.checks.norm_action,
            )
        except CodecError as exc:
            self._intake.store.release(received, False)
            self._fail(str(exc), more_frames=False)
        self._fold(tensors)

    def abort(self) -> None:
        """Give the update up (its stream ended midway); the session's close drops the client."""
        if self._decoder is not None:
            self._intake.store.discard(self._decoder)
            self._decoder = None

    def _expand(self, received: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Turn the wire tensors into full weights (uncompressed ones pass untouched)."""
        setting = self._intake.checks.compression
        if setting.codec == "none":
            return received
        full = compression.decode(received, self._global_state, setting)
        self._intake.store.release(received, False)  # the wire form is no longer needed
        return full

    def _fold(self, tensors: Mapping[str, torch.Tensor]) -> None:
        state = self._intake.state
        with state.cond:
            member = state.registry.current(self.client_id, self._session)
            current = state.round
            if (
                current is None
                or current.number != self.round
                or not current.fold.is_open_for(self.client_id)
            ):
                self._intake.store.release(tensors, False)
                if member is not None and member.work is None:
                    member.move(Stage.IDLE)
                    state.cond.notify_all()
                self._log.info("update_ignored", round=self.round, reason="round closed")
                return
            current.reports[self.client_id] = self._report(current, member)
            if self.metrics.HasField("evaluation"):
                current.evaluations.append(
                    messages.client_evaluation(self.client_id, self.metrics.evaluation)
                )
            # The fold owns the tensors from here on; the client is free in the same breath.
            self._log.debug("update_folding", round=self.round)
            current.fold.submit(self.client_id, float(self.weight), tensors)
            if member is not None:
                state.registry.release(member)
            state.cond.notify_all()
        self._log.info(
            "update_received", round=self.round, train_examples=self.weight, bytes_up=self.nbytes
        )

    def _report(self, current: Round, member: Member | None) -> metrics.ClientReport:
        return metrics.ClientReport(
            client_id=self.client_id,
            name=member.name if member is not None else "",
            train_examples=self.weight,
            train_loss=self.metrics.train_loss,
            train_seconds=self.metrics.train_seconds,
            bytes_down=current.bytes_down.get(self.client_id, 0),
            bytes_up=self.nbytes,
            seconds=time.monotonic() - current.started,
        )

    def _fail(self, reason: str, more_frames: bool) -> NoReturn:
        """Refuse the update: give its buffers back and drop the client from the round."""
        self.abort()
        state = self._intake.state
        with state.cond:
            member = state.registry.current(self.client_id, self._session)
            current = state.round
            if member is not None and current is not None and current.number == self.round:
                self._intake.refuse(member, current, reason, more_frames, self._log)
            if member is not None and member.work is None:
                member.move(Stage.DISCARDING if more_frames else Stage.IDLE)
                state.cond.notify_all()
        self._log.warning("update_refused", round=self.round, reason=reason)
        raise UploadRefusedError(int(pb.BAD_TENSOR_STREAM), reason, leaves_round=True)
