"""The job: who takes part, the rounds, the running aggregate, metrics and model files.

A coordinator thread (``Job.run``) drives the phases WAITING -> ROUND(r) ... -> EVALUATING ->
FINISHED. Sessions call in from their reader threads (admit, mark_ready, submit_update, ...);
all job-wide state is guarded by one condition variable, on which the coordinator waits with a
deadline, never longer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch

from fedsilo.common import codec, compression
from fedsilo.common.errors import ConfigError, JobAbortedError, ProtocolError
from fedsilo.common.names import CLIENT_NAME_RULE, is_client_name
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.seeding import derive_seed
from fedsilo.common.task_identity import TaskIdentity
from fedsilo.common.wire import PROTOCOL_VERSION, SERVER_CHUNKS, ModelFrames, serialize
from fedsilo.report.tensorboard import TensorBoardSink
from fedsilo.server import metrics
from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointWriter,
    job_identity,
)
from fedsilo.server.config import ServerConfig
from fedsilo.server.run_files import METRICS_FILE, MODEL_FILE, MetricsLog, save_model
from fedsilo.server.sampling import sample_clients
from fedsilo.server.session import ClientSession, OutgoingModel, Upload
from fedsilo.server.state_machine import Event, JobPhase, SessionState, next_phase
from fedsilo.server.strategies import make_strategy
from fedsilo.server.uploads import UploadStore
from fedsilo.server.validation import bound_update

SPILL_DIR = "spill"  # in the run folder: uploads that wait for their turn to be folded


@dataclass
class RoundState:
    """Bookkeeping of the round in progress."""

    number: int
    fold: OrderedFold
    started: float
    bytes_down: dict[int, int] = field(default_factory=dict)
    reports: dict[int, metrics.ClientReport] = field(default_factory=dict)
    evaluations: list[metrics.ClientEvaluation] = field(default_factory=list)
    dropped: dict[int, dict[str, Any]] = field(default_factory=dict)

    def drop(self, client_ids: list[int], reason: str, phases: dict[int, str]) -> list[int]:
        """Drop these clients if they still owed an update; record why, where and when."""
        gone = self.fold.drop(client_ids)
        after = round(time.monotonic() - self.started, 3)
        for cid in gone:
            self.dropped[cid] = {
                "reason": reason,
                "phase": phases.get(cid, "unknown"),
                "after_seconds": after,
            }
        return gone


@dataclass(frozen=True)
class JobOutcome:
    """How the job ended."""

    finished: bool
    rounds_completed: int
    reason: str = ""
    stopped: bool = False  # ended by request_stop (a signal), not by a failure


class Job:
    """One federated training job on this server."""

    def __init__(
        self,
        config: ServerConfig,
        initial_state: dict[str, torch.Tensor],
        log: structlog.typing.FilteringBoundLogger,
        admitted: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self._admitted = admitted  # with mutual TLS: reads the names the job admits
        # Taken over, not copied: the caller built this model for the job alone.
        self.global_state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in initial_state.items()
        }
        self.specs = codec.specs_of(self.global_state)
        self.model_bytes = sum(spec.nbytes for spec in self.specs)
        self.compression = compression.Compression(
            config.compression, config.topk_fraction, config.per_channel
        )
        # What an update carries on the wire under the job's codec; uploads are checked on it.
        self.wire_specs = compression.wire_specs(self.specs, self.compression)
        self.wire_bytes = sum(spec.nbytes for spec in self.wire_specs)
        self.chunk_size = config.chunk_size
        try:
            self.strategy: Any = make_strategy(config.strategy, config.strategy_options)
        except ValueError as exc:
            raise ConfigError(f"strategy: {exc}") from exc
        self.phase = JobPhase.WAITING
        self.rounds_completed = 0
        self._cond = threading.Condition()
        self._sessions: dict[int, ClientSession] = {}
        self._ids_by_name: dict[str, int] = {}
        self._round: RoundState | None = None
        self._final_expected: set[int] = set()
        self._final_evaluations: list[metrics.ClientEvaluation] = []
        self._pending_row: dict[str, Any] | None = metrics.initial_row()
        self._stop_reason: str | None = None
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_log = MetricsLog(run_dir / METRICS_FILE)
        self.model_path = run_dir / MODEL_FILE
        self.checkpoint_path = run_dir / CHECKPOINT_FILE
        self._tensorboard = TensorBoardSink(run_dir) if config.tensorboard else None
        self.identity = job_identity(config)
        self.uploads = UploadStore(run_dir / SPILL_DIR, config.chunk_size)
        self._checkpoints = CheckpointWriter(self.checkpoint_path, log)
        self._last_round_row: dict[str, Any] | None = None  # the checkpoint's row of that round

    def begin(self, checkpoint: Checkpoint | None) -> None:
        """Start afresh (replacing an old metrics file) or continue from ``checkpoint``."""
        if checkpoint is not None:
            self.restore(checkpoint)
        elif self.metrics_log.path.exists():
            self.log.warning("metrics_file_replaced", path=str(self.metrics_log.path))
            self.metrics_log.path.unlink()

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: its model, round, pending row and client ids."""
        codec.check_specs_match(codec.specs_of(checkpoint.global_state), self.specs)
        self.global_state = {spec.name: checkpoint.global_state[spec.name] for spec in self.specs}
        self.strategy.load_state_dict(checkpoint.strategy_state)
        self.rounds_completed = checkpoint.round
        self._pending_row = checkpoint.pending_row
        self._ids_by_name = dict(checkpoint.client_ids)
        kept = self.metrics_log.truncate(before_round=checkpoint.round)
        self.log.info("job_resumed", round=checkpoint.round, metrics_rows_kept=kept)

    # ------------------------------------------------------------------ called by sessions

    def open_session(
        self, peer: str, cancel: Callable[[], object], certificate_name: str | None
    ) -> ClientSession:
        """Create the session object of a newly opened stream (``cancel`` cuts it off)."""
        return ClientSession(self, peer, cancel, certificate_name)

    def admit(self, session: ClientSession, hello: pb.Hello) -> tuple[int, pb.ServerMessage]:
        """Check a Hello and assign the client id; return it with the InitConfig to send."""
        if hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                int(pb.PROTOCOL_VERSION_MISMATCH),
                f"client speaks protocol {hello.protocol_version}, server {PROTOCOL_VERSION}",
            )
        if hello.HasField("job_id") and hello.job_id != self.config.job_id:
            raise ProtocolError(
                int(pb.WRONG_JOB),
                f"this server runs job {self.config.job_id}, not job {hello.job_id}",
            )
        name = hello.client_name
        if not is_client_name(name):
            raise ProtocolError(
                int(pb.MALFORMED_MESSAGE),
                f"client name must be {CLIENT_NAME_RULE}",
            )
        self._check_admitted(session.certificate_name, name)
        with self._cond:
            if self.phase in (JobPhase.FINISHED, JobPhase.ABORTED):
                raise ProtocolError(int(pb.ILLEGAL_MESSAGE), "the job is over")
            client_id = self._ids_by_name.setdefault(name, len(self._ids_by_name))
            replaced = self._sessions.get(client_id)
            self._sessions[client_id] = session
            if replaced is not None:
                # The newest connection of a name wins: a client that reconnects after a
                # network failure must not wait until the server notices the old stream died.
                self._drop_session_from_round(replaced, "replaced by a new connection")
        if replaced is not None:
            replaced.send(
                pb.ServerMessage(
                    error=pb.Error(
                        code=pb.NAME_IN_USE, message=f"a new connection took over the name {name!r}"
                    )
                )
            )
            replaced.close()  # a dead old stream is reaped by keepalive; a live one is told why
            replaced.log.warning("session_replaced", by=session.peer)
        session.log.info("client_joined", client_id=client_id, client=name)
        return client_id, pb.ServerMessage(
            init_config=pb.InitConfig(client_id=client_id, job=self._job_config())
        )

    def _check_admitted(self, certificate_name: str | None, client_name: str) -> None:
        """With mutual TLS: the certificate must be admitted and the name must be its own."""
        if self._admitted is None:
            return
        if certificate_name is None:
            raise ProtocolError(int(pb.NOT_ADMITTED), "no client certificate")
        if certificate_name not in self._admitted():
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                f"certificate {certificate_name!r} is not admitted to job {self.config.job_id}",
            )
        if client_name != certificate_name:
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                f"certificate {certificate_name!r} may not use the client name {client_name!r}",
            )

    def expand_update(self, wire: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Turn an update's wire tensors into full weights against the global model (may raise).

        Uncompressed updates pass through untouched (a spilled one stays on disk); compressed
        ones are expanded in memory.
        """
        if self.compression.codec == "none":
            return wire
        return compression.decode(wire, self.global_state, self.compression)

    def bound_update(self, tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Apply the job's update norm bound against the current global model (may raise)."""
        return bound_update(
            tensors, self.global_state, self.config.update_norm_bound, self.config.norm_bound_action
        )

    def session_idle(self) -> None:
        """Wake the coordinator: a session has just become idle (ready for a round)."""
        with self._cond:
            self._cond.notify_all()

    def mark_ready(self, session: ClientSession, ready: pb.Ready) -> None:
        """Note that a client has loaded its task and data."""
        session.log.info(
            "client_ready", train_examples=ready.train_examples, test_examples=ready.test_examples
        )
        with self._cond:
            self._cond.notify_all()

    def update_status(self, client_id: int, round_number: int, synced_round: int) -> str:
        """Say whether an update for ``round_number`` is 'open', 'late' or 'wrong' now.

        Late (or duplicate) updates, for a round this client was in but that is closed or
        already has its update, are ignored quietly; an update for a round the client was
        never sent is wrong.
        """
        if round_number > synced_round or round_number == 0:
            return "wrong"
        if round_number < synced_round:
            return "late"
        with self._cond:
            current = self._round
            open_now = (
                current is not None
                and current.number == round_number
                and current.fold.is_open_for(client_id)
            )
        return "open" if open_now else "late"

    def upload_decoder(
        self, session: ClientSession, specs: list[codec.TensorSpec], round_number: int
    ) -> codec.TensorStreamDecoder:
        """Return the decoder of an update: in memory if it is the first to be folded (it
        becomes the running sum), else spilled unless small (see UploadStore)."""
        with self._cond:
            current = self._round
            in_turn = (
                current is not None
                and current.number == round_number
                and current.fold.in_turn == session.client_id
                and not current.fold.folded
            )
        return self.uploads.decoder(specs, in_turn, f"r{round_number}-c{session.client_id}")

    def submit_update(
        self, session: ClientSession, upload: Upload, tensors: Mapping[str, torch.Tensor]
    ) -> None:
        """Fold a complete, checked update into the round (or ignore it if it came too late)."""
        assert session.client_id is not None and session.name is not None
        cid = session.client_id
        with self._cond:
            current = self._round
            if (
                current is None
                or current.number != upload.round
                or not current.fold.is_open_for(cid)
            ):
                session.log.info("update_ignored", round=upload.round, reason="round closed")
                self.uploads.release(tensors, False)
                return
            finished = time.monotonic()
            current.reports[cid] = metrics.ClientReport(
                client_id=cid,
                name=session.name,
                train_examples=upload.train_examples,
                train_loss=upload.metrics.train_loss,
                train_seconds=upload.metrics.train_seconds,
                bytes_down=current.bytes_down.get(cid, 0),
                bytes_up=upload.nbytes,
                seconds=finished - current.started,
            )
            if upload.metrics.HasField("evaluation"):
                current.evaluations.append(_client_evaluation(cid, upload.metrics.evaluation))
            current.fold.submit(cid, float(upload.train_examples), tensors)
            self._cond.notify_all()
        session.log.info(
            "update_received",
            round=upload.round,
            train_examples=upload.train_examples,
            bytes_up=upload.nbytes,
        )

    def reject_update(self, session: ClientSession, round_number: int, reason: str) -> None:
        """Drop a client from the round because its update was refused."""
        assert session.client_id is not None
        with self._cond:
            current = self._round
            if current is not None and current.number == round_number:
                current.drop(
                    [session.client_id], f"update refused: {reason}", {session.client_id: "upload"}
                )
            self._cond.notify_all()
        session.log.warning("update_refused", round=round_number, reason=reason)

    def record_final_evaluation(self, session: ClientSession, result: pb.EvalResult) -> None:
        """Store a client's evaluation of the final model."""
        assert session.client_id is not None
        with self._cond:
            if session.client_id in self._final_expected and result.round == self.rounds_completed:
                self._final_expected.discard(session.client_id)
                self._final_evaluations.append(
                    _client_evaluation(session.client_id, result.evaluation)
                )
                self._cond.notify_all()

    def session_closed(self, session: ClientSession) -> None:
        """Forget a session whose stream ended; drop it from the round if it owed an update."""
        cid = session.client_id
        if cid is None:
            return
        with self._cond:
            if self._sessions.get(cid) is session:
                del self._sessions[cid]
                self._final_expected.discard(cid)
            self._drop_session_from_round(session, "disconnected")
            self._cond.notify_all()
        session.log.info("client_left", phase=session.phase)

    def _drop_session_from_round(self, session: ClientSession, reason: str) -> None:
        """Under the lock: drop this session's client from the round it is working on."""
        current = self._round
        cid = session.client_id
        working = session.phase in ("download", "training", "upload")
        if current is not None and cid is not None and working and session.round == current.number:
            current.drop([cid], reason, {cid: session.phase})
            self._cond.notify_all()

    # ------------------------------------------------------------------ control

    def progress(self) -> tuple[int, int, int]:
        """Return (rounds completed, updates in for the current round, clients selected)."""
        with self._cond:
            current = self._round
            if current is None:
                return self.rounds_completed, 0, 0
            return self.rounds_completed, len(current.fold.folded), len(current.fold.expected)

    def request_stop(self, reason: str) -> None:
        """Ask the coordinator to abort the job (e.g. on SIGTERM); returns at once."""
        with self._cond:
            self._stop_reason = reason
            self._cond.notify_all()

    def run(self) -> JobOutcome:
        """Drive the whole job; return how it ended. Blocks until then."""
        try:
            for number in range(self.rounds_completed + 1, self.config.rounds + 1):
                self._await_clients(number)
                self._run_round(number)
            self._final_evaluation()
        except JobAbortedError as exc:
            return self._abort(str(exc))
        self._save_results()
        self._set_phase(JobPhase.FINISHED)
        self._close_all(pb.ServerMessage(finish=pb.Finish(rounds_completed=self.rounds_completed)))
        self.log.info("job_finished", rounds=self.rounds_completed, model=str(self.model_path))
        return JobOutcome(finished=True, rounds_completed=self.rounds_completed)

    # ------------------------------------------------------------------ coordinator steps

    def _await_clients(self, number: int) -> None:
        needed = self.config.min_clients
        if number == self.rounds_completed + 1 and self.config.start_clients is not None:
            needed = self.config.start_clients  # the first round of this run waits for more
        with self._cond:
            if self.phase is not JobPhase.WAITING and len(self._idle_ids()) >= needed:
                return
            if self.phase is not JobPhase.WAITING:
                self.phase = next_phase(self.phase, JobPhase.WAITING)
            self.log.info(
                "waiting_for_clients", round=number, needed=needed, ready=len(self._idle_ids())
            )
            arrived = self._cond.wait_for(
                lambda: self._stop_reason is not None or len(self._idle_ids()) >= needed,
                timeout=self.config.join_timeout,
            )
            self._raise_if_stopping()
            if not arrived:
                raise JobAbortedError(
                    f"only {len(self._idle_ids())} of min_clients={needed} clients were ready "
                    f"within join_timeout={self.config.join_timeout:g}s"
                )

    def _run_round(self, number: int) -> None:
        log = self.log.bind(round=number)
        frames = self._model_frames()
        header = self._model_header(frames)
        with self._cond:
            self.phase = next_phase(self.phase, JobPhase.ROUND)
            selected = sample_clients(
                self._idle_ids(),
                seed=self.config.seed,
                round_number=number,
                count=self.config.clients_per_round,
                fraction=self.config.fraction,
                minimum=self.config.min_clients,
            )
            fold = OrderedFold(
                selected,
                self.global_state,
                keep_all=self.strategy.needs_all_updates,
                release=self.uploads.release,
            )
            current = RoundState(number, fold, time.monotonic())
            self._round = current
            sessions = {cid: self._sessions[cid] for cid in selected}
        # Sessions are offered work outside the job lock: they take their own lock first.
        for cid, session in sessions.items():
            sync = pb.ServerMessage(
                sync_model=pb.SyncModel(
                    round=number, train=self._train_config(number, cid), model=header
                )
            )
            stream = OutgoingModel(serialize(sync), frames)
            current.bytes_down[cid] = stream.nbytes
            if not session.offer(Event.SYNC, (number, stream)):
                stream.abandon()
                with self._cond:
                    current.drop([cid], "disconnected", {cid: "download"})
        log.info("round_started", clients=selected, model_bytes=self.model_bytes)
        done = self._wait_watching(
            lambda: current.fold.complete, lambda: current.fold.outstanding, current
        )
        with self._cond:
            if not done:
                current.drop(
                    current.fold.outstanding,
                    f"no update within round_timeout={self.config.round_timeout:g}s",
                    self._phases(current.fold.outstanding),
                )
            self._round = None
        if current.dropped:
            log.warning("clients_dropped", dropped=current.dropped)
        if len(current.fold.folded) < self.config.min_clients:
            current.fold.discard()
            raise JobAbortedError(
                f"round {number}: {len(current.fold.folded)} of {len(selected)} selected clients "
                f"delivered an update; min_clients is {self.config.min_clients}"
            )
        if self.strategy.state_dict():
            self._checkpoints.wait()  # a checkpoint being written may refer to that state
        if self.strategy.needs_all_updates:
            updates, weights = current.fold.collected()
            new_state = self.strategy.combine(self.global_state, updates, weights)
        else:
            new_state = self.strategy.next_global(self.global_state, current.fold.mean())
        current.fold.discard()
        old_state = self.global_state
        self.global_state = {spec.name: new_state[spec.name].contiguous() for spec in self.specs}
        if frames.idle and not self._checkpoints.busy:
            # Nothing reads the old model any more: its memory takes the next upload, which then
            # decodes into pages already mapped instead of faulting in fresh ones.
            self.uploads.recycle(old_state, in_use=self.global_state)
        self.rounds_completed = number
        seconds = time.monotonic() - current.started
        self._write_row(current.evaluations)
        self._pending_row = metrics.round_row(
            number,
            selected=selected,
            reports=current.reports,
            dropped=current.dropped,
            bytes_down=current.bytes_down,
            seconds=seconds,
        )
        # Written in the background while the next round runs (see CheckpointWriter).
        self._last_round_row = self._pending_row
        self._checkpoints.offer(self._checkpoint(self._pending_row))
        log.info(
            "round_done",
            participants=current.fold.folded,
            seconds=round(seconds, 3),
            train_loss=self._pending_row["train_loss"],
        )

    def _final_evaluation(self) -> None:
        with self._cond:
            self.phase = next_phase(self.phase, JobPhase.EVALUATING)
            # As many clients as a round trains evaluate the final model (all, by default).
            targets = sample_clients(
                self._idle_ids(),
                seed=self.config.seed,
                round_number=self.rounds_completed,
                count=self.config.clients_per_round,
                fraction=self.config.fraction,
                purpose="evaluate",
            )
        frames = self._model_frames()
        evaluate = pb.ServerMessage(
            evaluate=pb.Evaluate(round=self.rounds_completed, model=self._model_header(frames))
        )
        opening = serialize(evaluate)
        with self._cond:
            self._final_expected = set(targets)
            self._final_evaluations = []
            sessions = {cid: self._sessions[cid] for cid in targets}
        for cid, session in sessions.items():
            stream = OutgoingModel(opening, frames)
            if not session.offer(Event.EVALUATE, (self.rounds_completed, stream)):
                stream.abandon()
                with self._cond:
                    self._final_expected.discard(cid)
        self.log.info("final_evaluation_started", clients=sorted(self._final_expected))
        self._wait_watching(lambda: not self._final_expected, lambda: sorted(self._final_expected))
        with self._cond:
            evaluations = list(self._final_evaluations)
        self._write_row(evaluations)

    def _abort(self, reason: str) -> JobOutcome:
        self.log.error("job_aborted", reason=reason, rounds_completed=self.rounds_completed)
        with self._cond:
            self.phase = next_phase(self.phase, JobPhase.ABORTED)
        self._write_row([])
        self._save_results()
        # A stopped server can be resumed: clients keep trying to reconnect.
        resumable = self._stop_reason is not None
        self._close_all(pb.ServerMessage(abort=pb.Abort(reason=reason, retry=resumable)))
        return JobOutcome(
            finished=False,
            rounds_completed=self.rounds_completed,
            reason=reason,
            stopped=self._stop_reason is not None,
        )

    # ------------------------------------------------------------------ helpers

    def _raise_if_stopping(self) -> None:
        if self._stop_reason is not None:
            raise JobAbortedError(self._stop_reason)

    def _set_phase(self, target: JobPhase) -> None:
        with self._cond:
            self.phase = next_phase(self.phase, target)

    def _wait_watching(
        self,
        done: Callable[[], bool],
        watched: Callable[[], list[int]],
        current: RoundState | None = None,
    ) -> bool:
        """Wait until ``done()`` or round_timeout; meanwhile cut off watched sessions that stall.

        A session stalls when nothing arrived from it and no frame went out to it for
        progress_timeout: deadlines are on progress, so a slow transfer that moves goes on.
        Returns whether ``done()`` held in time; raises JobAbortedError on a stop request.
        """
        deadline = time.monotonic() + self.config.round_timeout
        step = min(1.0, self.config.progress_timeout / 4)
        while True:
            stalled: list[ClientSession] = []
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop_reason is not None or done(),
                    timeout=max(0.0, min(step, deadline - time.monotonic())),
                )
                self._raise_if_stopping()
                if done():
                    return True
                now = time.monotonic()
                if now >= deadline:
                    return False
                for cid in watched():
                    session = self._sessions.get(cid)
                    if session is not None and now - session.last_progress > (
                        self.config.progress_timeout
                    ):
                        stalled.append(session)
                        reason = f"stalled: no progress for {self.config.progress_timeout:g}s"
                        if current is not None:
                            current.drop([cid], reason, {cid: session.phase})
                        self._final_expected.discard(cid)
            for session in stalled:
                session.log.warning("client_cut_off", phase=session.phase)
                session.cut_off()

    def _phases(self, client_ids: list[int]) -> dict[int, str]:
        return {
            cid: self._sessions[cid].phase if cid in self._sessions else "gone"
            for cid in client_ids
        }

    def _idle_ids(self) -> list[int]:
        return sorted(cid for cid, s in self._sessions.items() if s.state is SessionState.IDLE)

    def _close_all(self, last_message: pb.ServerMessage) -> None:
        with self._cond:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.send(last_message)
            session.close()

    def _write_row(self, evaluations: Sequence[metrics.ClientEvaluation]) -> None:
        """Complete the pending row with the evaluations of its model and append it."""
        if self._pending_row is None:
            return
        row = metrics.with_evaluation(self._pending_row, evaluations)
        self._pending_row = None
        self.metrics_log.append(row)
        if self._tensorboard is not None:
            self._tensorboard.append(row)

    def _checkpoint(self, pending_row: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            round=self.rounds_completed,
            global_state=self.global_state,
            strategy_state=self.strategy.state_dict(),
            pending_row=pending_row,
            client_ids=dict(self._ids_by_name),
            identity=self.identity,
        )

    def _save_results(self) -> None:
        """Write the checkpoint of the last round if it was skipped, and the model (model.pt)."""
        self._checkpoints.wait()
        self.uploads.clear()
        if self.rounds_completed == 0:
            return
        row = self._last_round_row
        if self._checkpoints.saved_round != self.rounds_completed and row is not None:
            self._checkpoints.offer(self._checkpoint(row), force=True)
            self._checkpoints.wait()
        save_model(self.global_state, self.model_path)

    def _model_header(self, frames: ModelFrames) -> pb.TensorStreamHeader:
        header = codec.header_of(self.specs)
        if frames.inline is not None:
            header.inline.CopyFrom(frames.inline)
        return header

    def _model_frames(self) -> ModelFrames:
        """The global model's frames, checksummed once and framed lazily by each stream."""
        return ModelFrames(
            list(self.global_state.values()), self.chunk_size, SERVER_CHUNKS, _server_trailer
        )

    def _train_config(self, number: int, client_id: int) -> pb.TrainConfig:
        return pb.TrainConfig(
            local_epochs=self.config.local_epochs,
            batch_size=self.config.batch_size,
            learning_rate=self.config.learning_rate,
            seed=derive_seed(self.config.seed, "train", number, client_id),
            proximal_mu=self.config.proximal_mu,
        )

    def _job_config(self) -> pb.JobConfig:
        # The task's identity as clients check it against their own policy (docs/protocol.md).
        identity = TaskIdentity.of(self.config.task, self.config.task_options)
        return pb.JobConfig(
            job_id=self.config.job_id,
            task=identity.name,
            task_options_json=identity.options_json,
            task_hash=identity.hash,
            train=pb.TrainConfig(
                local_epochs=self.config.local_epochs,
                batch_size=self.config.batch_size,
                learning_rate=self.config.learning_rate,
                proximal_mu=self.config.proximal_mu,
            ),
            seed=self.config.seed,
            rounds=self.config.rounds,
            chunk_size=self.chunk_size,
            heartbeat_seconds=self.config.progress_timeout / 4,
            progress_timeout_seconds=self.config.progress_timeout,
            compression=self.compression.to_proto(),
        )


def _server_trailer(checksum: int) -> pb.ServerMessage:
    return pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))


def _client_evaluation(client_id: int, evaluation: pb.Evaluation) -> metrics.ClientEvaluation:
    return metrics.ClientEvaluation(
        client_id=client_id,
        examples=evaluation.examples,
        loss=evaluation.loss,
        accuracy=evaluation.accuracy,
    )
