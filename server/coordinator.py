"""The coordinator: drives one job's phases on its own thread, never longer than a deadline.

    (RESTORED) -> WAITING -> ROUND(r) ... -> EVALUATING -> FINISHED      or ABORTED

It waits for clients, selects them, offers each its work, watches their progress, turns the
round's fold into the next model through the strategy, and ends the job. Every wait is on the
job's condition with a deadline; sessions are offered work with the condition released.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from fedsilo.common.errors import JobAbortedError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import ModelFrames
from fedsilo.server import messages, metrics
from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.checkpoint import Checkpoint
from fedsilo.server.config import ServerConfig
from fedsilo.server.global_model import GlobalModel
from fedsilo.server.job_state import FinalEvaluation, JobState, Round
from fedsilo.server.outbox import OutgoingModel
from fedsilo.server.recorder import JobRecorder
from fedsilo.server.registry import Member, Work, WorkKind
from fedsilo.server.resume_download import ParkedDownloads
from fedsilo.server.sampling import sample_clients
from fedsilo.server.secagg_stages import run_stages
from fedsilo.server.state_machine import Event, JobPhase

FINISH_DELIVERY_SECONDS = 5.0  # how long the end of a job waits for its last messages to go out


@dataclass(frozen=True)
class JobOutcome:
    """How the job ended."""

    finished: bool
    rounds_completed: int
    reason: str = ""
    stopped: bool = False  # ended by request_stop (a signal), not by a failure
    already_finished: bool = False  # --resume of a job that had finished: nothing was run


class Coordinator:
    """Runs the job's rounds and its final evaluation."""

    def __init__(
        self,
        config: ServerConfig,
        state: JobState,
        model: GlobalModel,
        recorder: JobRecorder,
        log: structlog.typing.FilteringBoundLogger,
        downloads: ParkedDownloads | None = None,
    ) -> None:
        self.config = config
        self.downloads = downloads  # broken downloads that go on once their client is back
        self.state = state
        self.model = model
        self.recorder = recorder
        self.store = model.store
        self.log = log

    def run(self) -> JobOutcome:
        """Drive the whole job; return how it ended. Blocks until then."""
        try:
            first = self.state.rounds_completed + 1
            if first == 1:  # row 0: the initial model
                self.recorder.annotate_pending(self.model.row_fields(self.log, charge=False))
            for number in range(first, self.config.rounds + 1):
                dp = self.model.dp
                if dp is not None and not dp.budget_left_for_a_round():
                    self.log.warning("dp_budget_reached", rounds=number - 1)
                    break
                self._await_clients(number, first_of_run=number == first)
                self._run_round(number)
            self._final_evaluation(first_of_run=first > self.config.rounds)
            self._finish()
        except JobAbortedError as exc:
            return self._abort(str(exc))
        return JobOutcome(finished=True, rounds_completed=self.state.rounds_completed)

    # ------------------------------------------------------------------ waiting

    def _needed(self, first_of_run: bool) -> tuple[int, str]:
        """Clients the next step needs, and the setting that says so."""
        if first_of_run and self.config.start_clients is not None:
            return self.config.start_clients, "start_clients"
        return self.config.min_clients, "min_clients"

    def _await_clients(self, number: int, first_of_run: bool) -> None:
        needed, setting = self._needed(first_of_run)
        state = self.state
        with state.cond:
            available = state.registry.available
            if state.phase is JobPhase.ROUND and len(available()) >= needed:
                return  # straight on to the next round
            if state.phase is not JobPhase.WAITING:
                state.move_to(JobPhase.WAITING)
            self.log.info(
                "waiting_for_clients", round=number, needed=needed, ready=len(available())
            )
            arrived = state.cond.wait_for(
                lambda: state.stop_reason is not None or len(available()) >= needed,
                timeout=self.config.join_timeout,
            )
            self._raise_if_stopping()
            if not arrived:
                raise JobAbortedError(
                    f"only {len(available())} of {setting}={needed} clients were ready "
                    f"within join_timeout={self.config.join_timeout:g}s"
                )

    # ------------------------------------------------------------------ a round

    def _run_round(self, number: int) -> None:
        log = self.log.bind(round=number)
        frames = self.model.round_frames(self.config.chunk_size)
        header = messages.model_header(self.model.round_specs, frames)
        state = self.state
        with state.cond:
            state.move_to(JobPhase.ROUND)
            selected = sample_clients(
                state.registry.available(),
                seed=self.config.seed,
                round_number=number,
                count=self.config.clients_per_round,
                fraction=self.config.fraction,
                minimum=self.config.min_clients,
            )
            fold = OrderedFold(
                selected,
                self.model.fold_like,
                keep_all=self.model.strategy.needs_all_updates,
                release=self.store.release,
                sum_buffers=self.model.sum_buffers,
            )
            current = Round(
                number,
                fold,
                self.model.state,
                deadline=time.monotonic() + self.config.round_timeout,
                weight_bound=self._weight_bound(selected),
            )
            current.secagg = self.model.secagg_round(self.config.job_id, number, selected)
            state.round = current
            work = Work(WorkKind.TRAIN, number)
            members = {cid: state.registry.assign(cid, work) for cid in selected}
        for cid, member in members.items():
            train = messages.train_config(self.config, number, cid)
            setup = current.secagg.setup_message() if current.secagg is not None else None
            stream = OutgoingModel(messages.sync_opening(number, train, header, setup), frames)
            current.bytes_down[cid] = stream.nbytes
            if not member.session.offer(Event.SYNC, (number, stream)):
                stream.abandon()
                with state.cond:
                    self._drop(current, [cid], "disconnected")
        log.info("round_started", clients=selected, model_bytes=self.model.nbytes)
        if current.secagg is not None:
            run_stages(state, current, self._wait, self._drop, self.log)
        resend = functools.partial(self._resend, current, header=header, frames=frames)
        done = self._wait(lambda: current.fold.complete, resend)
        with state.cond:
            if not done:
                reason = f"no update within round_timeout={self.config.round_timeout:g}s"
                self._drop(current, current.fold.outstanding, reason)
            state.round = None
        if current.dropped:
            log.warning("clients_dropped", dropped=current.dropped)
        if len(current.fold.folded) < self.config.min_clients:
            current.fold.discard()
            raise JobAbortedError(
                f"round {number}: {len(current.fold.folded)} of {len(selected)} selected clients "
                f"delivered an update; min_clients is {self.config.min_clients}"
            )
        self._step(current, frames)
        seconds = time.monotonic() - current.started
        self.recorder.write_row(current.evaluations)
        row = metrics.round_row(
            number,
            selected=selected,
            reports=current.reports,
            dropped=current.dropped,
            bytes_down=current.bytes_down,
            seconds=seconds,
        )
        row.update(self.model.row_fields(self.log, charge=True))
        with state.cond:
            state.rounds_completed = number
        self.recorder.round_done(row, self._checkpoint(row), last=number == self.config.rounds)
        log.info(
            "round_done",
            participants=current.fold.folded,
            seconds=round(seconds, 3),
            train_loss=row["train_loss"],
        )

    def _step(self, current: Round, frames: ModelFrames) -> None:
        """Turn the round's fold into the next global model through the strategy."""
        if self.model.strategy.state_dict():
            self.recorder.release_checkpoint()  # a checkpoint being written may read that state
        self.log.debug("round_aggregating", round=current.number)
        new_state = self.model.next_state(current)
        current.fold.discard()
        if frames.idle:
            # Nothing reads the old model any more (a checkpoint still writing it is stopped:
            # the next one is newer): its memory takes the next round's sums and uploads, which
            # then land in pages already mapped instead of faulting in fresh ones.
            self.recorder.release_checkpoint()
        self.model.replace(new_state, recycle=frames.idle)

    # ------------------------------------------------------------------ the end

    def _final_evaluation(self, first_of_run: bool) -> None:
        state = self.state
        with state.cond:
            state.move_to(JobPhase.EVALUATING)
        if first_of_run:
            self._await_evaluators()
        frames = self.model.frames(self.config.chunk_size)
        opening = messages.evaluate_opening(
            state.rounds_completed, messages.model_header(self.model.specs, frames)
        )
        with state.cond:
            # As many clients as a round trains evaluate the final model (all, by default).
            targets = sample_clients(
                state.registry.available(),
                seed=self.config.seed,
                round_number=state.rounds_completed,
                count=self.config.clients_per_round,
                fraction=self.config.fraction,
                purpose="evaluate",
            )
            final = FinalEvaluation(state.rounds_completed, set(targets))
            state.final = final
            work = Work(WorkKind.EVALUATE, state.rounds_completed)
            members = {cid: state.registry.assign(cid, work) for cid in targets}
        for cid, member in members.items():
            stream = OutgoingModel(opening, frames)
            if not member.session.offer(Event.EVALUATE, (final.round, stream)):
                stream.abandon()
                with state.cond:
                    final.expected.discard(cid)
        self.log.info("final_evaluation_started", clients=sorted(final.expected))
        self._wait(lambda: not final.expected)
        with state.cond:
            evaluations = list(final.evaluations)
            state.final = None
        self.recorder.write_row(evaluations)

    def _await_evaluators(self) -> None:
        """A job resumed after its last round waits for its clients before evaluating (bounded)."""
        needed, _ = self._needed(first_of_run=True)
        state = self.state
        with state.cond:
            self.log.info("waiting_for_clients", purpose="evaluate", needed=needed)
            arrived = state.cond.wait_for(
                lambda: state.stop_reason is not None or len(state.registry.available()) >= needed,
                timeout=self.config.join_timeout,
            )
            self._raise_if_stopping()
        if not arrived:
            self.log.warning("final_evaluation_short", needed=needed)

    def _finish(self) -> None:
        rounds = self.state.rounds_completed
        self.store.clear()
        self.recorder.save_results(rounds, self._newest_checkpoint(), self.model.state)
        self.recorder.mark_finished(rounds)
        with self.state.cond:
            self.state.move_to(JobPhase.FINISHED)
        self._close_all(messages.finish(rounds), wait=True)
        self.log.info("job_finished", rounds=rounds, model=str(self.recorder.model_path))

    def _abort(self, reason: str) -> JobOutcome:
        state = self.state
        self.log.error("job_aborted", reason=reason, rounds_completed=state.rounds_completed)
        with state.cond:
            state.phase = JobPhase.ABORTED  # from wherever it was: the end of every path
            stopped = state.stop_reason is not None
            rounds = state.rounds_completed
        self.recorder.write_row([])
        self.store.clear()
        self.recorder.save_results(rounds, self._newest_checkpoint(), self.model.state)
        # A stopped server can be resumed: clients keep trying to reconnect.
        self._close_all(messages.abort(reason, retry=stopped))
        return JobOutcome(finished=False, rounds_completed=rounds, reason=reason, stopped=stopped)

    # ------------------------------------------------------------------ helpers

    def _raise_if_stopping(self) -> None:
        if self.state.stop_reason is not None:
            raise JobAbortedError(self.state.stop_reason)

    def _drop(self, current: Round, client_ids: list[int], reason: str) -> None:
        """Drop clients from the round (cond held); they are free of its work, not yet idle."""
        registry = self.state.registry
        for cid in current.drop(client_ids, reason, registry.stages(client_ids)):
            member = registry.get(cid)
            if member is not None:
                member.work = None  # idle again once its stream says so (see Intake)
        self.state.cond.notify_all()

    def _wait(
        self,
        done: Callable[[], bool],
        resend: Callable[[list[tuple[Member, int]]], None] | None = None,
    ) -> bool:
        """Wait until ``done()`` or round_timeout; return whether it held in time.

        Clients that stall meanwhile are dropped and cut off by the SessionWatch
        (``server/watch.py``), which wakes this wait; with ``resend``, clients back for a broken
        download get the rest of it. Raises JobAbortedError on a stop request.
        """
        state, downloads = self.state, self.downloads if resend is not None else None
        deadline = time.monotonic() + self.config.round_timeout
        while True:
            with state.cond:
                state.cond.wait_for(
                    lambda: (
                        state.stop_reason is not None
                        or done()
                        or (downloads is not None and downloads.any_due())
                    ),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                self._raise_if_stopping()
                due = downloads.take_due() if downloads is not None else []
                if not due:
                    return done()
            assert resend is not None
            resend(due)

    def _resend(
        self,
        current: Round,
        due: list[tuple[Member, int]],
        header: pb.TensorStreamHeader,
        frames: ModelFrames,
    ) -> None:
        """Send clients back for a broken download the rest of the round's model."""
        for member, offset in due:
            cid = member.client_id
            train = messages.train_config(self.config, current.number, cid)
            opening = messages.sync_opening(current.number, train, header, resume_offset=offset)
            stream = OutgoingModel(opening, frames, start=offset)
            self.log.info(
                "download_resumed",
                client_id=cid,
                client=member.name,
                round=current.number,
                offset=offset,
            )
            if not member.session.offer(Event.SYNC, (current.number, stream)):
                stream.abandon()
                with self.state.cond:
                    self._drop(current, [cid], "disconnected")

    def _weight_bound(self, selected: list[int]) -> float:
        """The most the selected clients' weights can add up to (cond held)."""
        if self.config.weighting == "uniform":
            return float(len(selected))
        registry = self.state.registry
        return float(
            sum(m.declared_examples for cid in selected if (m := registry.get(cid)) is not None)
        )

    def _close_all(self, last_message: pb.ServerMessage, wait: bool = False) -> None:
        """Send every client its last message and end its stream; ``wait`` (bounded) until sent.

        Waiting makes "job_finished" mean that the clients were told: a server killed after it
        has nothing left to say to them.
        """
        with self.state.cond:
            members = self.state.registry.members()
        for member in members:
            member.session.send(last_message)
            member.session.close()
        if not wait:
            return
        deadline = time.monotonic() + FINISH_DELIVERY_SECONDS
        for member in members:
            member.session.wait_ended(max(0.0, deadline - time.monotonic()))

    def _checkpoint(self, pending_row: dict[str, object]) -> Checkpoint:
        return Checkpoint(
            round=self.state.rounds_completed,
            global_state=self.model.state,
            strategy_state=self.model.strategy.state_dict(),
            pending_row=dict(pending_row),
            identity=self.recorder.identity,
            extra=self.model.extra_state(),
        )

    def _newest_checkpoint(self) -> Checkpoint | None:
        row = self.recorder.pending_row()
        return self._checkpoint(row) if row is not None else None
