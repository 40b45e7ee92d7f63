"""The client's side of the protocol, whatever carries it: a gRPC stream or an in-process queue.

``ClientProtocol`` looks every server message up in the client's transition table
(``client/state_machine.py``) and runs the action: admit the job under the local policy
(``client/policy.py``) and load task and data, receive a model into the model's own tensors
(``client/incoming.py``), evaluate, train and send the update (``client/work.py``). What it
sends goes to a ``send`` callback. The gRPC daemon (``client/session.py``) and the simulator
both drive it, so a simulated client behaves exactly like a networked one.

Whatever the client refuses, it refuses once: one Error to the server (POLICY_MISMATCH,
UNSUPPORTED_CONFIG, BAD_TENSOR_STREAM, WRONG_ROUND, ILLEGAL_MESSAGE; TASK_FAILED when its task
raised, ``client/task_failure.py``), one line in the audit log, one exception, one line shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

import structlog
import torch

from fedsilo.client import resume, secagg_session, task_failure, work
from fedsilo.client.audit import AuditLog
from fedsilo.client.heartbeat import HeartbeatPacer
from fedsilo.client.incoming import IncomingModel
from fedsilo.client.joined import (
    Joined,
    LocalSettings,
    check_same_task,
    job_compression,
    join,
)
from fedsilo.client.secagg_session import ClientSecAgg
from fedsilo.client.state_machine import ClientState, ServerEvent, transition
from fedsilo.common.errors import (
    CodecError,
    ConfigError,
    FedsiloError,
    JobAbortedError,
    PolicyError,
    ProtocolError,
    SecAggRefusedError,
    ServerRefusedError,
    SessionLostError,
    TaskLoadError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.text import one_line
from fedsilo.common.wire import Outbound, RawChunk
from fedsilo.tasks import LocalData

__all__ = ["ClientProtocol", "LocalSettings", "Send"]

_T = TypeVar("_T")
Send = Callable[[Outbound | Iterator[bytes]], None]

MIN_HEARTBEAT_SECONDS = 0.05  # a server asking for faster heartbeats gets these


class ClientProtocol:
    """One client's protocol state: the table's state, the job it joined, the model stream."""

    def __init__(
        self,
        name: str,
        job_id: int | None,
        local: LocalSettings,
        log: structlog.typing.FilteringBoundLogger,
        audit: AuditLog | None = None,
    ) -> None:
        self.name = name
        self.job_id = job_id
        self.local = local
        self.log = log.bind(client=name)
        self.audit = audit
        self.state = ClientState.HELLO_SENT
        self.joined: Joined | None = None
        self._send_to: Send | None = None
        self._joined_this_session = False
        self._incoming: IncomingModel | None = None
        self._last_round = 0  # the last round synced in this session
        self._pacer = HeartbeatPacer()
        self.rounds_done = 0
        self._secagg = ClientSecAgg()  # secure aggregation's state, when the job uses it
        self._resume = resume.Transfers()  # what a later session may continue
        self._do_note_ack = self._resume.note_ack  # the table's NOTE_ACK action

    # ------------------------------------------------------------------ what the job gave

    @property
    def client_id(self) -> int | None:
        """The id the server assigned, once joined."""
        return self.joined.client_id if self.joined is not None else None

    @property
    def model(self) -> torch.nn.Module | None:
        """The model, once joined."""
        return self.joined.model if self.joined is not None else None

    @property
    def data(self) -> LocalData | None:
        """This client's data, once joined."""
        return self.joined.data if self.joined is not None else None

    @property
    def joined_this_session(self) -> bool:
        """Whether the current session got its InitConfig (so an outage ended)."""
        return self._joined_this_session

    # ------------------------------------------------------------------ driving

    def start_session(self, send: Send) -> pb.ClientMessage:
        """Begin a new stream whose outgoing messages go to ``send``; return the Hello."""
        self._send_to = send
        self._joined_this_session = False
        self._resume.set_aside(self._incoming)
        self._incoming = None
        self._last_round = 0
        self.state = ClientState.HELLO_SENT
        return self._resume.hello(self.name, self.job_id)

    def handle(self, message: pb.ServerMessage | RawChunk | None) -> bool:
        """Handle one server message (None: bytes that did not parse); True once it is over."""
        if message is None:
            self._refuse(
                pb.MALFORMED_MESSAGE,
                "the server broke the protocol: a message that does not parse",
                ProtocolError,
            )
        if isinstance(message, RawChunk):
            self._dispatch(ServerEvent.CHUNK, message.data)
            return False
        kind = message.WhichOneof("body")
        if kind is None:
            self._illegal("a message with no body (or one this client does not know)")
        event = ServerEvent(kind)
        payload = getattr(message, cast("str", kind))
        self._dispatch(event, payload.data if event is ServerEvent.CHUNK else payload)
        if event in (ServerEvent.SYNC_MODEL, ServerEvent.EVALUATE):
            self._receive_inline(payload.model)
        return self.state is ClientState.FINISHED

    def _dispatch(self, event: ServerEvent, payload: Any) -> None:
        step = transition(self.state, event)
        if step is None:
            self._illegal(f"{event.value} is not allowed while {self.state.value}")
        action, next_state = step
        task_failure.telling_server(getattr(self, f"_do_{action.value}"), payload, self._send)
        self.state = next_state

    def _receive_inline(self, header: pb.TensorStreamHeader) -> None:
        """A model that came whole in its header's message: its chunk and trailer, as streamed."""
        if header.HasField("inline"):
            if header.inline.data:
                self._dispatch(ServerEvent.CHUNK, header.inline.data)
            trailer = pb.TensorStreamTrailer(checksum=header.inline.checksum)
            self._dispatch(ServerEvent.TRAILER, trailer)

    # ------------------------------------------------------------------ actions: joining

    def _do_join(self, init: pb.InitConfig) -> None:
        self._joined_this_session = True
        job = init.job
        try:
            setting = job_compression(job)
        except ConfigError as exc:
            self._refuse(pb.UNSUPPORTED_CONFIG, str(exc), ConfigError)
        try:
            admitted = self.local.policy.admit(job)
            check_same_task(self.joined, job, admitted)
            self._secagg.accept_job(job, self.local.secagg_keys)
        except PolicyError as exc:
            self._refuse(pb.POLICY_MISMATCH, f"refused the server's job: {exc}", PolicyError)
        try:  # loading a big task or its data can outlast the server's progress deadline
            with self._heartbeats(job):
                joined, rejoined = join(self.joined, init, admitted, setting, self.local)
        except TaskLoadError as exc:
            self._refuse(pb.UNSUPPORTED_CONFIG, str(exc), TaskLoadError)
        self.joined = joined
        self.log = self.log.bind(job_id=job.job_id, client_id=init.client_id)
        self.log.info(
            "joined",
            rejoined=rejoined,
            task=job.task,
            task_hash=job.task_hash,
            policy=self.local.policy.mode,
            partition=joined.partition,
            train_examples=joined.data.train_examples,
            test_examples=joined.data.test_examples,
        )
        self._record("joined", **work.join_record(joined, rejoined, self.local.policy))
        ready = pb.Ready(
            train_examples=joined.data.train_examples, test_examples=joined.data.test_examples
        )
        self._send(pb.ClientMessage(ready=ready))
        self._resume.continue_after(init, self._send, self._record, self.log)

    # ------------------------------------------------------------------ actions: model streams

    def _do_begin_round(self, sync: pb.SyncModel) -> None:
        joined = self._joined()
        number = sync.round
        if not self._last_round < number <= joined.job.rounds:
            self._refuse(
                pb.WRONG_ROUND,
                f"the server broke the protocol: SyncModel for round {number}, expected one "
                f"in {self._last_round + 1}..{joined.job.rounds}",
                ProtocolError,
            )
        try:
            self.local.policy.bounds.check_training(
                sync.train, f"round {number}'s training settings"
            )
        except PolicyError as exc:
            self._refuse(pb.POLICY_MISMATCH, f"refused the server's round: {exc}", PolicyError)
        if self._secagg.enabled != sync.HasField("secagg"):
            self._illegal("a round without secure aggregation's setup, or one not asked for")
        self._secagg.expect_round(sync)
        self._last_round = number
        self._resume.note_sync(sync)
        self._begin_stream(number, sync.train, sync.model)

    def _do_begin_final(self, evaluate: pb.Evaluate) -> None:
        joined = self._joined()
        if evaluate.round > joined.job.rounds:
            self._refuse(
                pb.WRONG_ROUND,
                f"the server broke the protocol: Evaluate after round {evaluate.round} of a "
                f"{joined.job.rounds}-round job",
                ProtocolError,
            )
        self._begin_stream(evaluate.round, None, evaluate.model)

    def _begin_stream(
        self, number: int, train: pb.TrainConfig | None, header: pb.TensorStreamHeader
    ) -> None:
        joined = self._joined()
        try:  # a new model stream, or the rest of a broken one
            self._incoming = self._resume.incoming(joined, header, number, train)
        except CodecError as exc:
            self._bad_stream(f"the model does not fit the task: {exc}")

    def _do_receive_chunk(self, data: bytes | memoryview) -> None:
        assert self._incoming is not None  # the table allows chunks only inside a stream
        try:
            self._incoming.feed(data)
        except CodecError as exc:
            self._bad_stream(str(exc))

    def _finish_stream(self, trailer: pb.TensorStreamTrailer) -> IncomingModel:
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        try:
            incoming.finish(self._joined().model, trailer.checksum)
        except CodecError as exc:
            self._bad_stream(str(exc))
        self._record(
            "model_received",
            durable=False,  # fsynced with what this client sends next, before it leaves
            round=incoming.round,
            purpose="train" if incoming.train is not None else "final_evaluation",
            bytes=incoming.decoder.total_bytes,
            checksum=f"{trailer.checksum:016x}",
            **({"training": work.train_record(incoming.train)} if incoming.train else {}),
        )
        self.log.debug("model_received", round=incoming.round, bytes=incoming.decoder.total_bytes)
        return incoming

    # ------------------------------------------------------------------ actions: work

    def _do_train_and_upload(self, trailer: pb.TensorStreamTrailer) -> None:
        incoming = self._finish_stream(trailer)
        assert incoming.train is not None
        if self._secagg.enabled:  # keys go out first: peers need them while we train
            self._begin_masked_round(incoming.round)
        upload = work.train_round(
            self._joined(),
            incoming.round,
            incoming.train,
            device=self.local.device,
            heartbeats=self._heartbeats(),
            measure_norm=self.audit is not None,
            masked=self._secagg.enabled,
            ranks=self.local.ranks,  # LocalTrainingError if they fail: the session leaves
        )
        if self._secagg.enabled:
            self._secagg.keep(upload, self._joined().model)
            return
        self._record("update_sent", **upload.record)
        self._send(self._resume.keep(upload))
        self.rounds_done += 1
        self.log.info("update_sent", round=incoming.round, **upload.summary)

    def _do_evaluate_final(self, trailer: pb.TensorStreamTrailer) -> None:
        incoming = self._finish_stream(trailer)
        evaluation = work.evaluate_final(self._joined(), self.local.device, self._heartbeats())
        self._record(
            "evaluation_sent",
            round=incoming.round,
            examples=evaluation.examples,
            loss=evaluation.loss,
            accuracy=evaluation.accuracy,
        )
        self._send(
            pb.ClientMessage(
                eval_result=pb.EvalResult(
                    round=incoming.round, evaluation=work.evaluation_message(evaluation)
                )
            )
        )
        self.log.info(
            "final_evaluation_sent",
            round=incoming.round,
            accuracy=round(evaluation.accuracy, 5),
            loss=round(evaluation.loss, 5),
        )

    # ------------------------------------------------------------------ secure aggregation

    def _begin_masked_round(self, round_number: int) -> None:
        try:
            self._send(self._secagg.begin(round_number, self._joined(), self.local.secagg_keys))
        except (SecAggRefusedError, ConfigError) as exc:
            self._secagg_refused(str(exc))
        self.log.debug("secagg_advertised", round=round_number)

    def _do_secagg_share(self, roster: pb.SecAggKeyRoster) -> None:
        self._send(self._secagg_step(lambda: self._secagg.shares(roster)))
        self.log.debug("secagg_shares_sent", round=self._last_round)

    def _do_secagg_upload(self, routed: pb.SecAggRoutedShares) -> None:
        chunk_size = self._joined().job.chunk_size
        frames, record, summary = self._secagg_step(lambda: self._secagg.upload(routed, chunk_size))
        self._record("update_sent", **record)
        self._send(frames)
        self.rounds_done += 1
        self.log.info("update_sent", masked=True, **summary)

    def _do_secagg_unmask(self, request: pb.SecAggUnmaskRequest) -> None:
        self.log.debug("secagg_unmask_requested", round=self._last_round)
        self._send(self._secagg_step(lambda: self._secagg.unmask(request)))
        self._record("secagg_unmask", **secagg_session.unmask_record(request))

    def _secagg_step(self, step: Callable[[], _T]) -> _T:
        if not self._secagg.in_round:
            self._illegal("a secure-aggregation message outside a masked round")
        try:
            return step()
        except SecAggRefusedError as exc:
            self._secagg_refused(str(exc))

    def _secagg_refused(self, reason: str) -> NoReturn:
        self._secagg.end_round()
        self._refuse(
            pb.SECAGG_REFUSED, f"refused the server's secure aggregation: {reason}", ProtocolError
        )

    # ------------------------------------------------------------------ actions: endings

    def _do_end(self, finish: pb.Finish) -> None:
        self._record("finished", rounds_completed=finish.rounds_completed)
        self.log.info("job_finished", rounds=finish.rounds_completed)

    def _do_stop(self, abort: pb.Abort) -> None:
        reason = one_line(abort.reason)
        self._record("aborted", reason=reason, retry=abort.retry)
        if abort.retry:
            raise SessionLostError(f"the server stopped: {reason}")
        raise JobAbortedError(f"the server aborted the job: {reason}")

    def _do_server_error(self, error: pb.Error) -> None:
        code = pb.ErrorCode.Name(error.code) if error.code in pb.ErrorCode.values() else "?"
        raise ServerRefusedError(f"the server refused: {code}: {one_line(error.message)}")

    def _do_nothing(self, payload: object) -> None:
        return None

    # ------------------------------------------------------------------ plumbing

    def _joined(self) -> Joined:
        assert self.joined is not None  # the table allows these actions only once joined
        return self.joined

    def _heartbeats(self, job: pb.JobConfig | None = None) -> work.Heartbeats:
        seconds = (job or self._joined().job).heartbeat_seconds
        interval = max(seconds, MIN_HEARTBEAT_SECONDS) if seconds > 0 else 0.0
        beat, send = pb.ClientMessage(heartbeat=pb.Heartbeat()), self._send
        return self._pacer.running(lambda: send(beat), interval)

    def _send(self, message: Outbound | Iterator[bytes]) -> None:
        if self._send_to is None:
            raise RuntimeError("start_session() first")
        self._send_to(message)

    def _record(self, event: str, durable: bool = True, **fields: Any) -> None:
        if self.audit is not None:
            joined = self.joined
            where = {"job_id": joined.job.job_id, "client_id": joined.client_id} if joined else {}
            self.audit.record(event, durable, **where, **fields)

    def _bad_stream(self, reason: str) -> NoReturn:
        self._refuse(
            pb.BAD_TENSOR_STREAM,
            f"refused the server's model: {reason}; nothing trained",
            ProtocolError,
        )

    def _illegal(self, reason: str) -> NoReturn:
        self._refuse(pb.ILLEGAL_MESSAGE, f"the server broke the protocol: {reason}", ProtocolError)

    def _refuse(self, code: int, reason: str, error: type[FedsiloError]) -> NoReturn:
        """Tell the server once, record it, and stop with ``reason`` as the one line."""
        line = one_line(reason)
        self._send(pb.ClientMessage(error=pb.Error(code=cast("pb.ErrorCode", code), message=line)))
        self._record("refused", code=pb.ErrorCode.Name(cast("pb.ErrorCode", code)), reason=line)
        self.log.warning("refused", code=pb.ErrorCode.Name(cast("pb.ErrorCode", code)), reason=line)
        if error is ProtocolError:
            raise ProtocolError(code, line)
        raise error(line)
