"""One federated training job on this server: the parts, wired together, and what sessions may ask.

    Job ─┬─ JobState        shared fields, one condition          (server/job_state.py)
         ├─ ClientRegistry  names, ids, members, availability     (server/registry.py)
         ├─ Intake          one Upload per update, begin -> fold   (server/intake.py)
         ├─ Coordinator     phases, rounds, final evaluation       (server/coordinator.py)
         └─ JobRecorder     metrics, TensorBoard, checkpoints      (server/recorder.py)

Sessions reach the job only through the methods of ``SessionJob`` (``server/session.py``),
implemented here; each takes the job's condition for the few lines that change shared state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import torch

from fedsilo.common import compression
from fedsilo.common.bundles import ServerBundle, load_server_bundle
from fedsilo.common.errors import ConfigError, ProtocolError, SecAggRefusedError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import Trust
from fedsilo.common.specs import check_specs_match, specs_of
from fedsilo.common.text import one_line, shown
from fedsilo.server import messages
from fedsilo.server.central_eval import CentralEvaluator
from fedsilo.server.checkpoint import Checkpoint
from fedsilo.server.config import ServerConfig
from fedsilo.server.coordinator import Coordinator, JobOutcome
from fedsilo.server.dp_round import DpRound
from fedsilo.server.global_model import GlobalModel, SecAggSettingsOfJob
from fedsilo.server.intake import Intake, UploadChecks
from fedsilo.server.job_state import JobState
from fedsilo.server.recorder import JobRecorder
from fedsilo.server.registry import ClientRegistry, Member, Stage, WorkKind
from fedsilo.server.report_checks import ReportError, check_evaluation
from fedsilo.server.run_files import CLIENT_IDS_FILE, ClientIdLog, MetricsLog
from fedsilo.server.secagg_round import secagg_config
from fedsilo.server.session import ClientSession
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.strategies import make_strategy
from fedsilo.server.strategies.fednova import local_steps
from fedsilo.server.transfers import KeptTransfers
from fedsilo.server.upload import Upload
from fedsilo.server.uploads import UploadStore
from fedsilo.server.watch import SessionWatch

SPILL_DIR = "spill"
_SECAGG_EVENTS = {
    "SecAggKeyAdvert": "secagg_advert",
    "SecAggKeyShares": "secagg_shares",
    "SecAggUnmaskResponse": "secagg_unmask",
}  # in the run folder: uploads that wait for their turn to be folded

# Errors by which a client says it cannot do its work: it is dropped from its round or the
# final evaluation at once, for this reason, instead of when its stream ends (or times out).
LEAVES_WORK = {
    pb.TASK_FAILED: "task failed",
    pb.POLICY_MISMATCH: "policy mismatch",
    pb.UNSUPPORTED_CONFIG: "unsupported config",
    pb.PRIVACY_BUDGET_SPENT: "privacy budget spent",
}

__all__ = ["Job", "JobOutcome"]


class Job:
    """One federated training job on this server."""

    def __init__(
        self,
        config: ServerConfig,
        initial_state: dict[str, torch.Tensor],
        log: structlog.typing.FilteringBoundLogger,
        admitted: Callable[[], ServerBundle] | None = None,
        central: CentralEvaluator | None = None,
    ) -> None:
        self.config = config
        self.log = log
        # Taken over, not copied: the caller built this model for the job alone.
        global_state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in initial_state.items()
        }
        setting = compression.Compression(
            config.compression, config.topk_fraction, config.per_channel
        )
        try:
            strategy = make_strategy(config.strategy, config.strategy_options)
        except ValueError as exc:
            raise ConfigError(f"strategy: {exc}") from exc
        run_dir = config.run_dir
        dp = DpRound.for_job(config)
        self.recorder = JobRecorder(config, log)
        self.telemetry = self.recorder.telemetry
        registry = ClientRegistry(config.job_id, ClientIdLog(run_dir / CLIENT_IDS_FILE), admitted)
        self.state = JobState(registry=registry)
        self.store = UploadStore(
            run_dir / SPILL_DIR, config.chunk_size, spill_budget=config.spill_budget_mib << 20
        )
        specs = specs_of(global_state)
        secagg = secagg_config(config)
        job_secagg = (
            SecAggSettingsOfJob(secagg, _federation_trust(config), run_dir / SPILL_DIR)
            if secagg is not None
            else None
        )
        model = GlobalModel(
            global_state, strategy, self.store, central=central, dp=dp, secagg=job_secagg
        )
        self.intake = Intake(
            self.state,
            self.store,
            UploadChecks(
                wire_specs=compression.wire_specs(specs, setting, model.update_extras),
                compression=setting,
                # DP-FedAvg clips every update's change to C; otherwise the job's own bound.
                norm_bound=config.dp_clip_norm if dp else config.update_norm_bound,
                norm_action="clip" if dp else config.norm_bound_action,
                chunk_size=config.chunk_size,
                uniform_weights=config.weighting == "uniform",
                max_examples=config.max_examples,
                # Folding as it streams needs the full weights on the wire, a sum to fold
                # into, and no bound that changes the update (clip needs the whole of it).
                streams=setting.codec == "none"
                and not strategy.needs_all_updates
                and dp is None
                and not (
                    config.update_norm_bound is not None and config.norm_bound_action == "clip"
                ),
                update_extras=tuple(model.update_extras),
                local_steps=local_steps(config),
            ),
        )
        # Under secure aggregation a broken transfer is a dropped member (its stages' own rule).
        window = 0.0 if secagg is not None else config.transfer_resume_seconds
        self.transfers = KeptTransfers(self.state, window, log)
        downloads = self.transfers.downloads
        self.coordinator = Coordinator(config, self.state, model, self.recorder, log, downloads)
        self._job_message = messages.job_config(config, setting, secagg)

    def begin(self, checkpoint: Checkpoint | None) -> None:
        """Start afresh, or continue from ``checkpoint``; with --resume, keep the client ids."""
        if self.config.resume:
            self.state.registry.restore_ids()
        else:
            self.state.registry.reset_ids()
        if checkpoint is None:
            self.recorder.begin_fresh()
            return
        model = self.coordinator.model
        check_specs_match(specs_of(checkpoint.global_state), model.specs)
        model.restore(checkpoint.global_state, checkpoint.strategy_state, checkpoint.extra)
        self.state.rounds_completed = checkpoint.round
        self.state.phase = JobPhase.RESTORED
        self.recorder.restore(checkpoint)

    # ------------------------------------------------------------------ for the caller

    def run(self) -> JobOutcome:
        """Drive the whole job (see Coordinator); return how it ended."""
        watch = SessionWatch(self.state, self.config.progress_timeout, self.log, self.transfers)
        watch.start()
        try:
            return self.coordinator.run()
        finally:
            watch.stop()

    def request_stop(self, reason: str) -> None:
        """Ask the coordinator to abort the job (e.g. on SIGTERM); returns at once."""
        with self.state.cond:
            self.state.stop_reason = reason
            self.state.cond.notify_all()

    def progress(self) -> tuple[int, int, int]:
        """Return (rounds completed, updates in for the current round, clients selected)."""
        with self.state.cond:
            current = self.state.round
            if current is None:
                return self.state.rounds_completed, 0, 0
            return (
                self.state.rounds_completed,
                len(current.fold.folded),
                len(current.fold.expected),
            )

    @property
    def global_state(self) -> Mapping[str, torch.Tensor]:
        """The current global model (replaced after each round)."""
        return self.coordinator.model.state

    @property
    def metrics_log(self) -> MetricsLog:
        """The job's metrics.jsonl."""
        return self.recorder.metrics_log

    def open_session(
        self, peer: str, cancel: Callable[[], object], certificate_name: str | None
    ) -> ClientSession:
        """Create the session object of a newly opened stream (``cancel`` cuts it off)."""
        session = ClientSession(self, peer, cancel, certificate_name)
        with self.state.cond:
            self.state.pending[session] = time.monotonic()
        return session

    # ------------------------------------------------------------------ SessionJob

    def admit(self, session: ClientSession, hello: pb.Hello) -> tuple[int, pb.ServerMessage]:
        """Check a Hello and assign the client id; return it with the InitConfig to send."""
        registry = self.state.registry
        registry.check_hello(hello, session.certificate_name)
        with self.state.cond:
            if self.state.phase in (JobPhase.FINISHED, JobPhase.ABORTED):
                raise ProtocolError(int(pb.ILLEGAL_MESSAGE), "the job is over")
            known = registry.ids.get(hello.client_name)
            if (known is None or registry.get(known) is None) and len(
                registry.members()
            ) >= self.config.max_clients:
                raise ProtocolError(
                    int(pb.NOT_ADMITTED),
                    f"the job is full: max_clients={self.config.max_clients} are connected",
                )
            self.state.pending.pop(session, None)
            if known is not None:
                self.transfers.before_admit(known)
            member, replaced = registry.admit(hello.client_name, session)
            if replaced is not None:
                self._leave_work(
                    replaced.client_id, "replaced by a new connection", replaced.stage.value
                )
            resume = self.transfers.after_admit(member, hello)
        if replaced is not None:
            replaced.session.send(
                messages.error(
                    int(pb.NAME_IN_USE),
                    f"a new connection took over the name {hello.client_name!r}",
                )
            )
            # A dead old stream is reaped by keepalive; a live one is told why.
            replaced.session.close()
            self.log.warning(
                "session_replaced", client_id=member.client_id, client=member.name, by=session.peer
            )
        session.log.info("client_joined", client_id=member.client_id, client=member.name)
        return member.client_id, messages.init_config(member.client_id, self._job_message, resume)

    def ready(self, session: ClientSession, ready: pb.Ready) -> None:
        """Note that a client has loaded its task and data: it is available for work.

        Its training examples bound the weight of every update it sends; more than the job
        (or its line in clients.json) allows is refused, and the stream closed.
        """
        assert session.name is not None
        cap = self.state.registry.examples_cap(session.name, self.config.max_examples)
        if ready.train_examples > cap or ready.test_examples > self.config.max_examples:
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                f"Ready claims {ready.train_examples} training and {ready.test_examples} "
                f"held-out examples; this job allows at most {cap} for {session.name!r}",
            )
        dp = messages.record_dp_fields(ready, self.config.require_dp)  # NOT_ADMITTED if required
        session.log.info(
            "client_ready",
            train_examples=ready.train_examples,
            test_examples=ready.test_examples,
            **dp,
        )
        with self.state.cond:
            member = self.state.registry.current(session.client_id, session)
            if member is not None:
                member.declared_examples = ready.train_examples
                member.move(Stage.IDLE)
                self.state.cond.notify_all()

    def begin_upload(self, session: ClientSession, send: pb.SendModel) -> Upload:
        """Open the upload a SendModel announces (raises UploadRefusedError)."""
        assert session.client_id is not None
        if send.HasField("resume_offset"):  # it continues a broken upload
            return self.transfers.resume_upload(session.client_id, session, send, session.log)
        return self.intake.begin(session.client_id, session, send, session.round, session.log)

    def stream_discarded(self, session: ClientSession) -> None:
        """The rest of a refused stream was swallowed: the client is idle again."""
        with self.state.cond:
            member = self.state.registry.current(session.client_id, session)
            if member is not None and member.stage is Stage.DISCARDING:
                member.move(Stage.IDLE)
                self.state.cond.notify_all()

    def download_done(self, session: ClientSession) -> None:
        """A model stream went out whole: the client now trains (or evaluates)."""
        with self.state.cond:
            member = self.state.registry.current(session.client_id, session)
            if member is not None and member.stage is Stage.DOWNLOAD:
                evaluating = member.work is not None and member.work.kind is WorkKind.EVALUATE
                member.move(Stage.EVALUATING if evaluating else Stage.TRAINING)
                session.log.debug("download_done", round=session.round)

    def eval_result(self, session: ClientSession, result: pb.EvalResult) -> None:
        """Store a client's evaluation of the final model."""
        cid = session.client_id
        assert cid is not None
        try:
            check_evaluation(result.evaluation, self.config.max_examples, "final evaluation")
        except ReportError as exc:
            session.log.warning("evaluation_refused", round=result.round, reason=str(exc))
            valid = False
        else:
            valid = True
        with self.state.cond:
            final = self.state.final
            member = self.state.registry.current(cid, session)
            if final is not None and cid in final.expected and result.round == final.round:
                final.expected.discard(cid)
                if valid:
                    final.evaluations.append(messages.client_evaluation(cid, result.evaluation))
            if member is not None:
                self.state.registry.release(member)
            self.state.cond.notify_all()

    def secagg_message(self, session: ClientSession, message: Any) -> None:
        """Take a client's secure-aggregation stage message for the round in progress.

        One that breaks the protocol (a bad signature, a message for another client, out of
        order) takes the client out of the round and is answered with SECAGG_REFUSED.
        """
        cid = session.client_id
        assert cid is not None
        event = message.DESCRIPTOR.name
        with self.state.cond:
            current = self.state.round
            member = self.state.registry.current(cid, session)
            if current is None or current.secagg is None or member is None or member.work is None:
                return  # a round that ended: nothing to take part in any more
            try:
                current.secagg.receive(cid, _SECAGG_EVENTS[event], message)
            except SecAggRefusedError as exc:
                reason = f"secure aggregation refused: {exc}"
                current.drop([cid], reason, {cid: member.stage.value})
                self.state.registry.release(member, member.stage)
                self.state.cond.notify_all()
                raise ProtocolError(int(pb.SECAGG_REFUSED), str(exc)) from exc
            if event == "SecAggUnmaskResponse":
                self.state.registry.release(member)  # its part of the round is done
            self.state.cond.notify_all()

    def peer_error(self, session: ClientSession, error: pb.Error) -> None:
        """Record an Error a client sent; one that says it cannot work drops it from its work."""
        dropped: dict[str, object] = {}
        if error.code in LEAVES_WORK:
            with self.state.cond:
                member = self.state.registry.current(session.client_id, session)
                if member is not None:
                    dropped = self._fail_work(member, error)
        session.log.warning(
            "client_reported_error",
            code=messages.code_name(error.code),
            message=shown(error.message, 300),
            **dropped,
        )

    def _fail_work(self, member: Member, error: pb.Error) -> dict[str, object]:
        """Drop a member that cannot do its work from it (cond held); return the log's fields."""
        work = member.work
        if work is None:
            return {"phase": member.stage.value}
        if member.stage is Stage.DOWNLOAD and error.code == pb.TASK_FAILED:
            # Its task runs only on a whole model: the download is over, though the stream's
            # writer may not have noted it yet.
            evaluating = work.kind is WorkKind.EVALUATE
            member.move(Stage.EVALUATING if evaluating else Stage.TRAINING)
        phase = member.stage.value
        reason = f"{LEAVES_WORK[error.code]}: {one_line(error.message)}"
        final = self.state.final
        if (
            work.kind is WorkKind.EVALUATE
            and final is not None
            and member.client_id in final.expected
        ):
            self.recorder.evaluation_failed(member.client_id, reason)  # in the final row
        self._leave_work(member.client_id, reason, phase)
        member.work = None  # not released to IDLE: no new work before its stream ends (it leaves)
        return {"phase": phase, "round": work.round, "dropped": True}

    def closed(self, session: ClientSession, upload: Upload | None = None) -> None:
        """Forget a session whose stream ended; drop it from the work it owed, unless it keeps
        its place to continue a broken transfer (``server/transfers.py``)."""
        with self.state.cond:
            self.state.pending.pop(session, None)
            member = self.state.registry.remove(session.client_id, session)
            kept, reason = self.transfers.closed(member, upload)
            if member is None:
                return
            if not kept:
                self._leave_work(member.client_id, reason, member.stage.value)
        session.log.info("client_left", phase=member.stage.value)

    def _leave_work(self, client_id: int, reason: str, stage: str) -> None:
        """Drop a client from the round or final evaluation it was part of (cond held)."""
        state = self.state
        current = state.round
        if current is not None:
            current.drop([client_id], reason, {client_id: stage})
        if state.final is not None:
            state.final.expected.discard(client_id)
        state.cond.notify_all()


def _federation_trust(config: ServerConfig) -> Trust | None:
    """The federation's CA, which secure aggregation checks members' signed keys against."""
    if config.tls is None:
        return None
    return Trust.from_pem(load_server_bundle(config.tls).root_certificates)
