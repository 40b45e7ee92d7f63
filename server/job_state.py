"""The job-wide state that threads share, and the one condition variable that guards it.

Threads of a running job (see docs/architecture.md, "Threads and locks"):

- the coordinator (``Coordinator.run``): phases, rounds, the final evaluation;
- per client stream, a reader (``ClientSession.handle``) and a writer (the gRPC handler draining
  the session's outbox);
- the checkpoint writer (``CheckpointWriter``), which only reads what it was handed;
- the main thread, which only calls ``request_stop`` from a signal handler.

Every field below is read and written with ``cond`` held. A session may take ``cond`` while
holding its own lock; nothing holding ``cond`` ever takes a session's lock (the coordinator
collects what to offer, releases ``cond``, then offers), so the order is session lock -> cond,
and leaf locks (a session's progress clock, the upload store, a model's reservation count) are
taken last and never held across a call.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fedsilo.server import metrics
from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.registry import ClientRegistry
from fedsilo.server.state_machine import JobPhase, next_phase


@dataclass
class Round:
    """Bookkeeping of the round in progress."""

    number: int
    fold: OrderedFold
    global_state: dict[str, Any]  # the model this round trains; updates are checked against it
    started: float = field(default_factory=time.monotonic)
    deadline: float = math.inf  # monotonic time at which the round stops waiting for updates
    weight_bound: float = 1.0  # the sum of the selected clients' weight bounds
    secagg: Any = None  # the round's SecAggRound, when the job sums masked updates
    bytes_down: dict[int, int] = field(default_factory=dict)
    reports: dict[int, metrics.ClientReport] = field(default_factory=dict)
    evaluations: list[metrics.ClientEvaluation] = field(default_factory=list)
    dropped: dict[int, dict[str, Any]] = field(default_factory=dict)

    def drop(self, client_ids: list[int], reason: str, stages: dict[int, str]) -> list[int]:
        """Drop these clients if they still owed an update; record why, where and when."""
        if self.secagg is not None:
            for cid in client_ids:  # whatever it owed: a key stage, its upload, its shares
                self.secagg.drop(cid)
        gone = self.fold.drop(client_ids)
        after = round(time.monotonic() - self.started, 3)
        for cid in gone:
            self.dropped[cid] = {
                "reason": reason,
                "phase": stages.get(cid, "unknown"),
                "after_seconds": after,
            }
        return gone


@dataclass
class FinalEvaluation:
    """The evaluation of the final model: who still owes a result, and the results so far."""

    round: int
    expected: set[int]
    evaluations: list[metrics.ClientEvaluation] = field(default_factory=list)


@dataclass
class JobState:
    """What the job's threads share; every field is guarded by ``cond``."""

    registry: ClientRegistry
    phase: JobPhase = JobPhase.WAITING
    rounds_completed: int = 0
    round: Round | None = None
    final: FinalEvaluation | None = None
    stop_reason: str | None = None
    # Streams opened but not yet admitted, with the monotonic time each opened (SessionWatch).
    pending: dict[Any, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def move_to(self, phase: JobPhase) -> None:
        """Enter ``phase`` (cond held); an illegal move raises PhaseError, which aborts the job."""
        self.phase = next_phase(self.phase, phase)
