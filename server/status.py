"""What a running job is doing, as one JSON-ready snapshot: the job, its round, each client.

``copy_state`` copies the shared fields under ``JobState.cond`` and releases it at once;
everything else (the transfers of ``JobTelemetry``, the rows, turning it into JSON) happens
without the condition, so a status request never holds up a round for longer than a copy.
``build_status`` is a pure function of those copies, tested from a JobState built by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fedsilo.server.config import ServerConfig
from fedsilo.server.job_state import JobState
from fedsilo.server.registry import Stage
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.telemetry import JobTelemetry, Transfer

# What a client is doing, in the words of the status page (registry.Stage -> state).
STATE_OF_STAGE = {
    Stage.JOINED: "connected",  # admitted; loading its task and data
    Stage.IDLE: "idle",
    Stage.DOWNLOAD: "downloading",
    Stage.TRAINING: "training",
    Stage.UPLOAD: "uploading",
    Stage.QUEUED: "queued",  # its update waits, unread, for its turn to be folded
    Stage.EVALUATING: "evaluating",
    Stage.DISCARDING: "discarding",
    Stage.SECAGG_WAIT: "masked",  # its masked update is in; waiting for the other uploads
    Stage.SECAGG_UNMASK: "unmasking",  # it owes the shares the unmask stage asked for
}


@dataclass(frozen=True)
class MemberCopy:
    """One connected member, as it was when the copy was taken."""

    client_id: int
    name: str
    stage: Stage
    work: str | None  # "train r" / "evaluate r"
    stage_seconds: float
    idle_seconds: float  # since its stream last moved
    declared_examples: int


@dataclass(frozen=True)
class RoundCopy:
    """The round in progress."""

    number: int
    elapsed_seconds: float
    selected: list[int]
    folded: list[int]
    outstanding: list[int]
    dropped: dict[int, dict[str, Any]]


@dataclass(frozen=True)
class StateCopy:
    """Everything ``build_status`` needs from JobState, copied under its condition."""

    phase: JobPhase
    rounds_completed: int
    stop_reason: str | None
    ids: dict[str, int]
    members: list[MemberCopy]
    round: RoundCopy | None
    evaluating: list[int] | None  # who still owes the final evaluation
    available: list[int] = field(default_factory=list)


def copy_state(state: JobState) -> StateCopy:
    """Copy what the status shows from ``state`` (takes and releases ``state.cond``)."""
    now = time.monotonic()
    with state.cond:
        registry = state.registry
        members = [
            MemberCopy(
                client_id=member.client_id,
                name=member.name,
                stage=member.stage,
                work=f"{member.work.kind.value} {member.work.round}" if member.work else None,
                stage_seconds=now - member.since,
                # A leaf lock (the session's progress clock): allowed under cond.
                idle_seconds=member.session.progress.idle_seconds(member.stage is Stage.UPLOAD),
                declared_examples=member.declared_examples,
            )
            for member in registry.members()
        ]
        current = state.round
        round_copy = (
            RoundCopy(
                number=current.number,
                elapsed_seconds=now - current.started,
                selected=list(current.fold.expected),
                folded=list(current.fold.folded),
                outstanding=list(current.fold.outstanding),
                dropped={cid: dict(why) for cid, why in current.dropped.items()},
            )
            if current is not None
            else None
        )
        return StateCopy(
            phase=state.phase,
            rounds_completed=state.rounds_completed,
            stop_reason=state.stop_reason,
            ids=registry.ids,
            members=members,
            round=round_copy,
            evaluating=sorted(state.final.expected) if state.final is not None else None,
            available=registry.available(),
        )


@dataclass(frozen=True)
class JobInfo:
    """What the status says about the job itself (from its config, fixed for its life)."""

    job_id: int
    task: str
    strategy: str
    rounds: int
    min_clients: int

    @classmethod
    def of(cls, config: ServerConfig) -> JobInfo:
        """Return the JobInfo of ``config``."""
        return cls(config.job_id, config.task, config.strategy, config.rounds, config.min_clients)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds")


def _last_drops(recent: list[dict[str, Any]]) -> tuple[int | None, dict[int, dict[str, Any]]]:
    """The newest completed round's drops, by client id."""
    for row in reversed(recent):
        if "dropped" in row:
            drops = {int(d["client_id"]): dict(d) for d in row["dropped"]}
            return int(row["round"]), drops
    return None, {}


def client_entry(
    client_id: int,
    name: str,
    member: MemberCopy | None,
    transfers: dict[tuple[int, str], Transfer],
    drop: dict[str, Any] | None,
    delivered: bool = False,
) -> dict[str, Any]:
    """Return one client's line of the status: its state, progress and the drop, if any."""
    entry: dict[str, Any] = {"client_id": client_id, "name": name, "drop": drop}
    if member is None:
        entry.update(state="dropped" if drop else "disconnected", progress=None, connected=False)
        entry["detail"] = _drop_detail(drop) if drop else "not connected"
        return entry
    state = STATE_OF_STAGE[member.stage]
    progress = None
    if member.stage in (Stage.DOWNLOAD, Stage.UPLOAD):
        direction = "down" if member.stage is Stage.DOWNLOAD else "up"
        transfer = transfers.get((client_id, direction))
        progress = transfer.ratio if transfer is not None else 0.0
    if drop is not None and drop.get("current") and member.work is None:
        state = "dropped"  # out of this round; still connected
    detail = state if progress is None else f"{state} {progress:.0%}"
    if state == "idle" and delivered:
        detail = "idle: update in"  # this round has its update; it waits for the others
    if state == "dropped" and drop is not None:
        detail = _drop_detail(drop)
    entry.update(
        state=state,
        progress=progress,
        connected=True,
        detail=detail,
        work=member.work,
        stage_seconds=round(member.stage_seconds, 3),
        last_progress_seconds=round(member.idle_seconds, 3),
        train_examples=member.declared_examples,
    )
    return entry


def _drop_detail(drop: dict[str, Any]) -> str:
    return f"dropped in round {drop['round']}: {drop['reason']} (while {drop['phase']})"


def build_status(
    info: JobInfo,
    copy: StateCopy,
    *,
    transfers: dict[tuple[int, str], Transfer],
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    started_wall: float,
    uptime_seconds: float,
    now_wall: float,
) -> dict[str, Any]:
    """Return the status document (GET /status) from copies taken a moment ago. Pure."""
    history, recent = rows
    last_round, last_drops = _last_drops(recent)
    drops: dict[int, dict[str, Any]] = {
        cid: {**why, "round": last_round, "current": False} for cid, why in last_drops.items()
    }
    if copy.round is not None:
        for cid, why in copy.round.dropped.items():
            drops[cid] = {"client_id": cid, **why, "round": copy.round.number, "current": True}
    members = {m.client_id: m for m in copy.members}
    names = {cid: name for name, cid in copy.ids.items()}
    names.update({m.client_id: m.name for m in copy.members})
    current = copy.round
    delivered = (
        set(current.selected) - set(current.outstanding) - set(current.dropped)
        if current is not None
        else set()
    )
    clients = [
        client_entry(cid, names[cid], members.get(cid), transfers, drops.get(cid), cid in delivered)
        for cid in sorted(names)
    ]
    return {
        "job": {
            "job_id": info.job_id,
            "task": info.task,
            "strategy": info.strategy,
            "phase": copy.phase.value,
            "round": _round_number(copy),
            "rounds": info.rounds,
            "rounds_completed": copy.rounds_completed,
            "min_clients": info.min_clients,
            "stop_reason": copy.stop_reason,
            "started_at": _iso(started_wall),
            "uptime_seconds": round(uptime_seconds, 3),
        },
        "round": _round_entry(copy.round),
        "final_evaluation": (
            {"outstanding": copy.evaluating} if copy.evaluating is not None else None
        ),
        "clients": clients,
        "clients_connected": len(copy.members),
        "clients_ready": len(copy.available),
        "history": history,
        "rows": recent,
        "time": _iso(now_wall),
    }


def _round_number(copy: StateCopy) -> int:
    """The round in progress, else the last completed one (0 before the first)."""
    return copy.round.number if copy.round is not None else copy.rounds_completed


def _round_entry(current: RoundCopy | None) -> dict[str, Any] | None:
    if current is None:
        return None
    return {
        "number": current.number,
        "elapsed_seconds": round(current.elapsed_seconds, 3),
        "selected": current.selected,
        "folded": current.folded,
        "outstanding": current.outstanding,
        "delivered": len(current.selected) - len(current.outstanding) - len(current.dropped),
        "dropped": [{"client_id": cid, **why} for cid, why in sorted(current.dropped.items())],
    }


class StatusView:
    """The read-only view of one running job that the admin server serves."""

    def __init__(self, config: ServerConfig, state: JobState, telemetry: JobTelemetry) -> None:
        self.info = JobInfo.of(config)
        self.config = config
        self.state = state
        self.telemetry = telemetry

    def status(self) -> dict[str, Any]:
        """Return the status document now."""
        copy = copy_state(self.state)
        telemetry = self.telemetry
        return build_status(
            self.info,
            copy,
            transfers=telemetry.transfers(),
            rows=telemetry.rows(),
            started_wall=telemetry.started_wall,
            uptime_seconds=time.monotonic() - telemetry.started,
            now_wall=time.time(),
        )
