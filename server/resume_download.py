"""Model downloads whose stream broke off, continued from where the client says it stands.

When a selected client's stream ends while its round's model is going out to it (it
disconnected, or the watch cut it off for lack of progress), the client stays in the round for
``transfer_resume_seconds`` (never past the round's deadline). Nothing is held for it: every stream
of a round frames the same global model lazily, with the checksum computed once. A client that
reconnects names the download in its Hello (round, and the bytes it has taken, which only it
knows: frames the server wrote may have died in the network); once it is Ready, the coordinator
sends it that round's SyncModel again with ``resume_offset``, the chunks from there and the same
trailer. Given up, and the client dropped from the round, at the earliest of: the window, the
round's end, a Hello that does not name it (or names another round, or more bytes than the
model has).

Not thread-safe by itself: every method runs with the job's condition held (``JobState.cond``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.registry import Member, Stage, Work, WorkKind

Log = structlog.typing.FilteringBoundLogger


@dataclass
class BrokenDownload:
    """A download waiting for its client to come back."""

    round: Round
    reason: str  # why its stream ended: the drop reason if it is never resumed
    expires: float  # monotonic
    offset: int | None = None  # where the client's new session continues, once it said so


class ParkedDownloads:
    """The job's broken downloads, by client id, until resumed or expired."""

    def __init__(self, state: JobState, window: float, log: Log) -> None:
        self._state = state
        self.window = window  # seconds a broken download is kept; 0: never
        self._log = log
        self._parked: dict[int, BrokenDownload] = {}
        self._first_break: dict[tuple[int, int], float] = {}  # (client id, round) -> when

    def holds(self, client_id: int) -> bool:
        """Whether a broken download of this client is kept."""
        return client_id in self._parked

    def park(self, member: Member, reason: str) -> bool:
        """Keep the round's place of a client whose download broke; False if it cannot be."""
        current = self._state.round
        if (
            self.window <= 0
            or current is None
            or member.stage is not Stage.DOWNLOAD
            or member.work != Work(WorkKind.TRAIN, current.number)
            or not current.fold.is_open_for(member.client_id)
        ):
            return False
        # The window runs from a client's first break in the round: breaking again and again
        # does not stretch it.
        first = self._first_break.setdefault((member.client_id, current.number), time.monotonic())
        expires = min(current.deadline, first + self.window)
        self._parked[member.client_id] = BrokenDownload(current, reason, expires)
        self._log.info(
            "download_parked",
            client_id=member.client_id,
            client=member.name,
            round=current.number,
            reason=reason,
        )
        return True

    def offer(self, member: Member, hello: pb.Hello) -> None:
        """Note where a reconnecting client's download goes on, or give it up if not named."""
        entry = self._parked.get(member.client_id)
        if entry is None:
            return
        asked = hello.resume_download if hello.HasField("resume_download") else None
        total = sum(t.numel() * t.element_size() for t in entry.round.global_state.values())
        if asked is None or asked.round != entry.round.number or asked.offset > total:
            self._give_up(member.client_id, f"{entry.reason}; reconnected without resuming")
            return
        entry.offset = int(asked.offset)
        member.work = Work(WorkKind.TRAIN, entry.round.number)  # not free for other work

    def take_due(self) -> list[tuple[Member, int]]:
        """Return the clients back and Ready whose download is to go on, and from where."""
        due = []
        for cid, entry in list(self._parked.items()):
            member = self._state.registry.get(cid)
            if entry.offset is None or member is None or member.stage is not Stage.IDLE:
                continue
            if entry.round is not self._state.round:
                continue  # expire() gives it up
            del self._parked[cid]
            member.move(Stage.DOWNLOAD)
            due.append((member, entry.offset))
        return due

    def any_due(self) -> bool:
        """Whether ``take_due`` would return something."""
        registry = self._state.registry
        return any(
            entry.offset is not None
            and (member := registry.get(cid)) is not None
            and member.stage is Stage.IDLE
            for cid, entry in self._parked.items()
        )

    def expire(self) -> None:
        """Give up broken downloads past their time or whose round is over."""
        now = time.monotonic()
        current = self._state.round.number if self._state.round is not None else None
        self._first_break = {k: v for k, v in self._first_break.items() if k[1] == current}
        for cid, entry in list(self._parked.items()):
            if entry.round is not self._state.round:
                del self._parked[cid]
                self._free(cid)
            elif now >= entry.expires:
                self._give_up(cid, f"{entry.reason}; not resumed within {self.window:g}s")

    def _give_up(self, client_id: int, reason: str) -> None:
        entry = self._parked.pop(client_id)
        entry.round.drop([client_id], reason, {client_id: Stage.DOWNLOAD.value})
        self._free(client_id)
        self._log.warning(
            "download_given_up", client_id=client_id, round=entry.round.number, reason=reason
        )

    def _free(self, client_id: int) -> None:
        """A client back for a download that will not go on is free for other work."""
        member = self._state.registry.get(client_id)
        if member is not None and member.work is not None and member.stage is not Stage.DOWNLOAD:
            member.work = None
        self._state.cond.notify_all()
