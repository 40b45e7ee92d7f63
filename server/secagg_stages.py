"""The stages of a secure-aggregation round, driven by the coordinator: keys, shares, the masked
uploads, unmasking. Each stage ends when nobody it waits for is left (a client that stalls or
leaves is dropped by the SessionWatch, which wakes the wait) or at the round's deadline; then
what the protocol produced is sent, outside the job's condition. A client the protocol leaves
out of the next stage (it did not answer in time) is dropped from the round with that reason."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from fedsilo.common.errors import JobAbortedError, SecAggError
from fedsilo.common.secagg import ServerStage
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.registry import Stage

Wait = Callable[[Callable[[], bool]], bool]
Drop = Callable[[Round, list[int], str], None]  # the coordinator's drop (cond held)
Log = structlog.typing.FilteringBoundLogger


def run_stages(state: JobState, current: Round, wait: Wait, drop: Drop, log: Log) -> None:
    """Run the round's secure aggregation to its unmasked sum (or raise JobAbortedError)."""
    agg = current.secagg
    assert agg is not None
    for stage in (ServerStage.ADVERTISE, ServerStage.SHARE):
        wait(lambda: not agg.waiting())
        _close(state, current, stage.value, drop, log)
    wait(lambda: current.fold.complete)  # every masked upload in, or its client gone
    _close(state, current, ServerStage.UPLOAD.value, drop, log)
    wait(lambda: not agg.waiting())
    with state.cond:
        try:
            agg.finish()
        except SecAggError as exc:
            raise JobAbortedError(f"round {current.number}: secure aggregation: {exc}") from exc
    log.info(
        "secagg_unmasked",
        round=current.number,
        survivors=list(agg.result.survivors),
        error_bound=agg.result.error_bound(),
    )


def _close(state: JobState, current: Round, stage: str, drop: Drop, log: Log) -> None:
    """Close the stage, drop who it left out, and send the others what it produced."""
    agg = current.secagg
    assert agg is not None
    outgoing = []
    with state.cond:
        try:
            messages = agg.close()
        except SecAggError as exc:
            raise JobAbortedError(f"round {current.number}: secure aggregation: {exc}") from exc
        left_out = [cid for cid in current.fold.outstanding if cid not in messages]
        if stage != ServerStage.UPLOAD.value and left_out:
            drop(current, left_out, f"no secure-aggregation {stage} in time")
        for cid, message in messages.items():
            member = state.registry.get(cid)
            if member is None:
                continue
            if stage == ServerStage.UPLOAD.value:
                member.move(Stage.SECAGG_UNMASK)  # from now on it owes its shares
            outgoing.append((member.session, message))
    log.debug("secagg_stage_closed", round=current.number, stage=stage, clients=sorted(messages))
    for session, message in outgoing:
        session.send(message)
