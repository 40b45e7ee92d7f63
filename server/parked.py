"""Broken transfers kept for their clients: the table both ``resume.py`` and ``resume_download.py``
keep theirs in.

An entry is kept by client id, for the round it broke in, until the earliest of the round's
deadline and ``window`` seconds after the client's first break in that round (breaking again and
again does not stretch it). What an entry holds, and what giving it up means, is the caller's.

Not thread-safe by itself: every method runs with the job's condition held (``JobState.cond``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from fedsilo.server.job_state import Round

T = TypeVar("T")


@dataclass
class Parked(Generic[T]):
    """A broken transfer waiting for its client."""

    client_id: int
    held: T  # what the caller keeps for the transfer to go on
    round: Round
    reason: str  # why its stream ended: the drop reason if it is never resumed
    expires: float  # monotonic


class ParkedTable(Generic[T]):
    """Broken transfers by client id, each with a deadline, until taken or swept out."""

    def __init__(self, window: float) -> None:
        self.window = window  # seconds a broken transfer is kept; 0: never
        self._parked: dict[int, Parked[T]] = {}
        self._first_break: dict[tuple[int, int], float] = {}  # (client id, round) -> when

    @property
    def enabled(self) -> bool:
        """Whether broken transfers are kept at all."""
        return self.window > 0

    def holds(self, client_id: int) -> bool:
        """Whether a broken transfer of this client is kept."""
        return client_id in self._parked

    def get(self, client_id: int) -> Parked[T] | None:
        """Return the kept transfer of this client, if any."""
        return self._parked.get(client_id)

    def pop(self, client_id: int) -> Parked[T] | None:
        """Take the kept transfer of this client out of the table, if any."""
        return self._parked.pop(client_id, None)

    def entries(self) -> list[Parked[T]]:
        """Return the kept transfers (a copy: the caller may pop while it walks them)."""
        return list(self._parked.values())

    def park(self, client_id: int, held: T, current: Round | None, reason: str) -> Parked[T] | None:
        """Keep a transfer of the round in progress; None when it cannot be kept."""
        if not self.enabled or current is None or not current.fold.is_open_for(client_id):
            return None
        first = self._first_break.setdefault((client_id, current.number), time.monotonic())
        entry = Parked(client_id, held, current, reason, min(current.deadline, first + self.window))
        self._parked[client_id] = entry
        return entry

    def sweep(self, current: Round | None) -> tuple[list[Parked[T]], list[Parked[T]]]:
        """Take out the entries whose round is over, and (apart) those past their time."""
        now = time.monotonic()
        number = current.number if current is not None else None
        self._first_break = {k: v for k, v in self._first_break.items() if k[1] == number}
        over: list[Parked[T]] = []
        lapsed: list[Parked[T]] = []
        for cid, entry in list(self._parked.items()):
            if entry.round is not current:
                over.append(self._parked.pop(cid))
            elif now >= entry.expires:
                lapsed.append(self._parked.pop(cid))
        return over, lapsed

    def lapsed_reason(self, entry: Parked[T]) -> str:
        """Say why a transfer past its time is given up."""
        return f"{entry.reason}; not resumed within {self.window:g}s"
