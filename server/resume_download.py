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

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.job_state import JobState
from fedsilo.server.parked import Parked, ParkedTable
from fedsilo.server.registry import Member, Stage, Work, WorkKind

Log = structlog.typing.FilteringBoundLogger


class ParkedDownloads:
    """The job's broken downloads, by client id, until resumed or expired."""

    def __init__(self, state: JobState, window: float, log: Log) -> None:
        self._state = state
        self._log = log
        # What each entry holds: where the client's new session continues, once it said so.
        self._parked: ParkedTable[int | None] = ParkedTable(window)

    def holds(self, client_id: int) -> bool:
        """Whether a broken download of this client is kept."""
        return self._parked.holds(client_id)

    def park(self, member: Member, reason: str) -> bool:
        """Keep the round's place of a client whose download broke; False if it cannot be."""
        current = self._state.round
        if (
            current is None
            or member.stage is not Stage.DOWNLOAD
            or member.work != Work(WorkKind.TRAIN, current.number)
        ):
            return False
        if self._parked.park(member.client_id, None, current, reason) is None:
            return False
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
            self._parked.pop(member.client_id)
            self._give_up(entry, f"{entry.reason}; reconnected without resuming")
            return
        entry.held = int(asked.offset)
        member.work = Work(WorkKind.TRAIN, entry.round.number)  # not free for other work

    def take_due(self) -> list[tuple[Member, int]]:
        """Return the clients back and Ready whose download is to go on, and from where."""
        due = []
        for entry in self._parked.entries():
            member = self._state.registry.get(entry.client_id)
            if entry.held is None or member is None or member.stage is not Stage.IDLE:
                continue
            if entry.round is not self._state.round:
                continue  # expire() gives it up
            self._parked.pop(entry.client_id)
            member.move(Stage.DOWNLOAD)
            due.append((member, entry.held))
        return due

    def any_due(self) -> bool:
        """Whether ``take_due`` would return something."""
        registry = self._state.registry
        return any(
            entry.held is not None
            and (member := registry.get(entry.client_id)) is not None
            and member.stage is Stage.IDLE
            for entry in self._parked.entries()
        )

    def expire(self) -> None:
        """Give up broken downloads past their time or whose round is over."""
        over, lapsed = self._parked.sweep(self._state.round)
        for entry in over:
            self._free(entry.client_id)
        for entry in lapsed:
            self._give_up(entry, self._parked.lapsed_reason(entry))

    def _give_up(self, entry: Parked[int | None], reason: str) -> None:
        """Give up a download already taken out of the table: its client leaves the round."""
        cid = entry.client_id
        entry.round.drop([cid], reason, {cid: Stage.DOWNLOAD.value})
        self._free(cid)
        self._log.warning(
            "download_given_up", client_id=cid, round=entry.round.number, reason=reason
        )

    def _free(self, client_id: int) -> None:
        """A client back for a download that will not go on is free for other work."""
        member = self._state.registry.get(client_id)
        if member is not None and member.work is not None and member.stage is not Stage.DOWNLOAD:
            member.work = None
        self._state.cond.notify_all()
