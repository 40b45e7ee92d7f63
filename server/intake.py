"""A round's intake: whether the round takes an update now, and where its bytes go.

    begin (SendModel: round, header, weight, metrics) -> an Upload (``server/upload.py``):
        chunks -> trailer -> checks -> fold -> release

``Intake.begin`` decides under the job's condition, in one critical section: is the round open
for this client (else late, quietly ignored, or the wrong round, an Error); do header, weight and
metrics pass; and where the bytes go. The update whose turn has come is folded as it streams; one
that arrives early waits in memory or on disk within their budgets, else in line: ``begin`` then
blocks (the stream is not read, so the client's sends stop on gRPC's flow control) until its
turn, or until the round no longer takes it. Every refusal drops the client from the round with
its reason and says whether the rest of the stream is to be swallowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

import structlog

from fedsilo.common import compression
from fedsilo.common.errors import CodecError, SecAggRefusedError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import TensorSpec, check_specs_match, specs_from_header
from fedsilo.common.tensor_stream import TensorStreamDecoder
from fedsilo.server.aggregation import StreamedFold
from fedsilo.server.fold_sink import FoldSink
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.registry import Member, SessionHandle, Stage
from fedsilo.server.report_checks import ReportError, check_local_metrics
from fedsilo.server.strategies.fednova import LocalSteps
from fedsilo.server.upload import Upload, UploadRefusedError
from fedsilo.server.uploads import UploadStore
from fedsilo.server.validation import magnitude_limit

Log = structlog.typing.FilteringBoundLogger


class UploadStatus(Enum):
    """Whether a round takes an update for ``round`` from a client now."""

    OPEN = "open"
    LATE = "late"  # for a round the client was in, closed or already holding its update
    WRONG = "wrong"  # for a round the client was never sent


@dataclass(frozen=True)
class UploadChecks:
    """What every update of this job is checked against."""

    wire_specs: list[TensorSpec]  # the tensors an update carries under the job's codec
    compression: compression.Compression
    norm_bound: float | None
    norm_action: str
    chunk_size: int
    uniform_weights: bool  # --weighting uniform: every update weighs 1
    max_examples: int
    streams: bool  # whether an in-turn update can be folded as it streams
    # Tensors after the model's in every update, passed through any codec (SCAFFOLD's dc).
    update_extras: tuple[TensorSpec, ...] = ()
    # FedNova: reported local steps are checked, and each weight divided by a_i.
    local_steps: LocalSteps | None = None

    def weight(self, send: pb.SendModel) -> tuple[float, float]:
        """Return an update's weight in the fold and what its base weight was divided by."""
        base = 1.0 if self.uniform_weights else float(send.train_examples)
        if self.local_steps is None:
            return base, 1.0
        normalizer = self.local_steps.factor(send.metrics.local_steps)
        return base / normalizer, normalizer

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
            member, current = self._open_round(member_id, session, send, synced_round, log)
            if current.secagg is not None:
                upload = self._masked(member, current, send, more_frames, log)
                member.move(Stage.UPLOAD)
                return upload
            specs = self._checked(member, current, send, more_frames, log)
            weight, _ = self.checks.weight(send)
            upload = self._placed(member, current, send, specs, weight, log)
            member.move(Stage.UPLOAD)
        log.debug(
            "upload_started",
            round=send.round,
            total_bytes=send.update.total_bytes,
            placement=upload.placement,
        )
        return upload

    def _open_round(
        self, member_id: int, session: SessionHandle, send: pb.SendModel, synced: int, log: Log
    ) -> tuple[Member, Round]:
        """Return the member and its open round, or raise for a wrong or late update."""
        member = self.state.registry.current(member_id, session)
        status = upload_status(self.state, member_id, send.round, synced)
        if status is UploadStatus.WRONG:
            raise UploadRefusedError(
                int(pb.WRONG_ROUND),
                f"update for round {send.round}, expected round {synced}",
                leaves_round=False,
            )
        current = self.state.round
        if status is UploadStatus.OPEN and member is not None and current is not None:
            return member, current
        if member is not None and member.work is None:
            more_frames = not send.update.HasField("inline")
            member.move(Stage.DISCARDING if more_frames else Stage.IDLE)
            self.state.cond.notify_all()
        log.info("update_ignored", round=send.round, reason="round closed or counted")
        raise UploadRefusedError(
            int(pb.WRONG_ROUND),
            f"round {send.round} is already closed",
            # The answer to its latest work (late) ends that work; an older one does not.
            leaves_round=send.round == synced,
            tell_client=False,
        )

    def _masked(
        self, member: Member, current: Round, send: pb.SendModel, more_frames: bool, log: Log
    ) -> Upload:
        """Open a masked upload: one uint32 vector, its weight inside (cond held)."""
        expected = [current.secagg.spec]
        try:
            specs = specs_from_header(send.update, expected[0].nbytes, max_tensors=1)
            check_specs_match(specs, expected)
            if send.train_examples != 0:
                raise CodecError("under secure aggregation the weight travels masked: send 0")
            check_local_metrics(send.metrics, self.checks.max_examples)
            sink = current.secagg.sink(member.client_id)
        except (CodecError, ReportError, SecAggRefusedError) as exc:
            self.refuse(member, current, str(exc), more_frames, log)
        decoder = TensorStreamDecoder(specs, max_chunk_size=self.checks.chunk_size, sink=sink)
        return self._upload(member, current, send, decoder, 1.0, None, log)

    def _checked(
        self, member: Member, current: Round, send: pb.SendModel, more_frames: bool, log: Log
    ) -> list[TensorSpec]:
        """Check header, weight and metrics; return the update's specs (or refuse)."""
        try:
            specs = specs_from_header(
                send.update, self.checks.wire_bytes, max_tensors=len(self.checks.wire_specs)
            )
            check_specs_match(specs, self.checks.wire_specs)
            if send.train_examples == 0:
                raise CodecError("update weight train_examples must be > 0")
            if send.train_examples > member.declared_examples:
                raise CodecError(
                    f"update claims {send.train_examples} training examples; "
                    f"its client's Ready said {member.declared_examples}"
                )
            check_local_metrics(send.metrics, self.checks.max_examples)
            steps = self.checks.local_steps
            problem = steps and steps.problem(send.metrics.local_steps, send.train_examples)
            if problem:
                raise ReportError(problem)
        except (CodecError, ReportError) as exc:
            self.refuse(member, current, str(exc), more_frames, log)
        return specs

    def _placed(
        self,
        member: Member,
        current: Round,
        send: pb.SendModel,
        specs: list[TensorSpec],
        weight: float,
        log: Log,
    ) -> Upload:
        """Make the upload with the sink its turn calls for; wait in line if nothing fits."""
        cid, fold = member.client_id, current.fold
        inline = send.update.HasField("inline")
        limit = magnitude_limit(current.weight_bound)
        label = f"r{send.round}-c{cid}"
        while True:
            if self.checks.streams and fold.can_stream(cid):
                stream = fold.begin_stream(cid, weight)
                measure = self.checks.norm_bound is not None
                sink = FoldSink(
                    specs,
                    stream,
                    max_chunk_size=self.checks.chunk_size,
                    magnitude_limit=limit,
                    reference=current.global_state if measure else None,
                )
                decoder = TensorStreamDecoder(
                    specs, max_chunk_size=self.checks.chunk_size, sink=sink
                )
                return self._upload(member, current, send, decoder, weight, stream, log)
            if fold.in_turn == cid and not fold.streaming:
                decoder = self.store.decoder(specs, True, label)
                return self._upload(member, current, send, decoder, weight, None, log)
            waiting = self.store.waiting_decoder(specs, label)
            if waiting is None and inline:  # its bytes are in memory already
                waiting = TensorStreamDecoder(specs, max_chunk_size=self.checks.chunk_size)
            if waiting is not None:
                return self._upload(member, current, send, waiting, weight, None, log)
            self._wait_in_line(member, current, send, log)

    def _wait_in_line(self, member: Member, current: Round, send: pb.SendModel, log: Log) -> None:
        """Block (cond released) until the round may take this upload, or raise if it will not."""
        member.move(Stage.QUEUED)
        log.info("upload_waits_in_line", round=send.round)
        state, cid = self.state, member.client_id
        state.cond.wait_for(
            lambda: (
                state.stop_reason is not None
                or state.round is not current
                or not current.fold.is_open_for(cid)
                or current.fold.can_stream(cid)
                or (current.fold.in_turn == cid and not current.fold.streaming)
            ),
            timeout=max(1.0, current.deadline - time.monotonic()),
        )
        if state.stop_reason is not None or state.round is not current:
            raise UploadRefusedError(
                int(pb.WRONG_ROUND), "the round ended", leaves_round=True, tell_client=False
            )
        if not current.fold.is_open_for(cid):
            if state.registry.current(cid, member.session) is member:
                member.move(Stage.DISCARDING)
            log.info("update_ignored", round=send.round, reason="dropped while in line")
            raise UploadRefusedError(
                int(pb.WRONG_ROUND),
                "the round no longer takes this update",
                leaves_round=True,
                tell_client=False,
            )

    def _upload(
        self,
        member: Member,
        current: Round,
        send: pb.SendModel,
        decoder: TensorStreamDecoder,
        weight: float,
        stream: StreamedFold | None,
        log: Log,
    ) -> Upload:
        return Upload(
            self,
            member=member,
            current=current,
            send=send,
            decoder=decoder,
            weight=weight,
            stream=stream,
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
