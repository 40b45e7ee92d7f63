"""Uploads whose stream broke off, kept for their client to continue (docs/protocol.md, "Resuming").

When a client's stream ends in the middle of a chunked upload (it disconnected, or the watch cut
it off for lack of progress), its ``Upload`` is parked here instead of being given up: the
decoder's position and running checksum and the update's buffers (the fold's second sum buffer
for the update whose turn it is, its waiting buffer or spill file otherwise) stay as they are,
and the client stays in the round. The client reconnects, names that upload in its Hello, learns
from InitConfig how many bytes the server holds and sends exactly the rest. Nothing taken is
taken twice: the stream goes on at the decoder's own position.

What is kept is given back, and the client dropped from the round, at the earliest of: the
round's deadline or end, ``transfer_resume_seconds`` after the break, a Hello that does not name
the upload, or a resumed SendModel that does not match it. A parked update keeps what it held
when its stream broke (memory within the waiting budget, or spill space within the spill
budget), so parking adds nothing to either; an in-turn one holds the fold's turn meanwhile
(later updates wait or spill, as they would behind a slow uploader).

Not thread-safe by itself: every method runs with the job's condition held (``JobState.cond``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.job_state import JobState, Round
from fedsilo.server.registry import Member, Stage, Work, WorkKind
from fedsilo.server.upload import Upload, UploadRefusedError

Log = structlog.typing.FilteringBoundLogger


@dataclass
class Parked:
    """A broken upload waiting for its client."""

    upload: Upload
    round: Round
    reason: str  # why its stream ended: the drop reason if it is never resumed
    expires: float  # monotonic


class ParkedUploads:
    """The job's broken uploads, by client id, until resumed or expired."""

    def __init__(self, state: JobState, window: float, log: Log) -> None:
        self._state = state
        self.window = window  # seconds a broken upload is kept; 0: never
        self._log = log
        self._parked: dict[int, Parked] = {}
        self._first_break: dict[tuple[int, int], float] = {}  # (client id, round) -> when
        # Uploaders the watch cut off for lack of progress, with its reason, until they close.
        self.stalled: dict[int, str] = {}

    @property
    def enabled(self) -> bool:
        """Whether broken uploads are kept at all."""
        return self.window > 0

    def holds(self, client_id: int) -> bool:
        """Whether a broken upload of this client is kept."""
        return client_id in self._parked

    def park(self, upload: Upload, reason: str) -> bool:
        """Keep a broken upload for its client; False when it cannot be continued."""
        current = self._state.round
        if (
            not self.enabled
            or not upload.resumable
            or current is None
            or current is not upload.round_state
            or not current.fold.is_open_for(upload.client_id)
        ):
            return False
        # The window runs from a client's first break in the round: breaking again and again
        # does not stretch it.
        first = self._first_break.setdefault((upload.client_id, current.number), time.monotonic())
        expires = min(current.deadline, first + self.window)
        self._parked[upload.client_id] = Parked(upload, current, reason, expires)
        self._state.cond.notify_all()  # a reconnect of this client may wait for it
        self._log.info(
            "upload_parked",
            client_id=upload.client_id,
            client=upload.client_name,
            round=upload.round,
            offset=upload.received_bytes,
            reason=reason,
            keep_seconds=round(expires - time.monotonic(), 3),
        )
        return True

    def offer(self, client_id: int, hello: pb.Hello) -> pb.StreamPosition | None:
        """Say where a reconnecting client's upload goes on, or give it up if not named."""
        entry = self._parked.get(client_id)
        if entry is None:
            return None
        upload = entry.upload
        asked = hello.resume_upload if hello.HasField("resume_upload") else None
        if asked is None or asked.round != upload.round or asked.offset > upload.received_bytes:
            self._give_up(client_id, f"{entry.reason}; reconnected without resuming the upload")
            return None
        return pb.StreamPosition(round=upload.round, offset=upload.received_bytes)

    def resume(self, member: Member, send: pb.SendModel, log: Log) -> Upload:
        """Hand the parked upload that a resumed SendModel continues to its new session."""
        cid = member.client_id
        entry = self._parked.pop(cid, None)
        current = self._state.round
        if entry is None or current is not entry.round or not current.fold.is_open_for(cid):
            if entry is not None:
                entry.upload.abort()
            log.info("update_ignored", round=send.round, reason="no broken upload to resume")
            raise UploadRefusedError(
                int(pb.WRONG_ROUND),
                f"no broken upload of round {send.round} to continue",
                leaves_round=False,
                tell_client=False,
            )
        upload = entry.upload
        problem = _mismatch(upload, send)
        if problem is not None:
            self._parked[cid] = entry  # _give_up finds it there
            self._give_up(cid, f"resumed upload refused: {problem}")
            raise UploadRefusedError(int(pb.BAD_TENSOR_STREAM), problem, leaves_round=True)
        upload.adopt(member, log)
        member.work = Work(WorkKind.TRAIN, upload.round)
        member.move(Stage.UPLOAD)
        log.info("upload_resumed", round=upload.round, offset=send.resume_offset)
        return upload

    def expire(self) -> None:
        """Give up broken uploads past their time or whose round is over."""
        now = time.monotonic()
        current = self._state.round.number if self._state.round is not None else None
        self._first_break = {k: v for k, v in self._first_break.items() if k[1] == current}
        for cid, entry in list(self._parked.items()):
            if entry.round is not self._state.round:
                del self._parked[cid]
                entry.upload.abort()  # the round already counted it out
            elif now >= entry.expires:
                self._give_up(cid, f"{entry.reason}; not resumed within {self.window:g}s")

    def _give_up(self, client_id: int, reason: str) -> None:
        entry = self._parked.pop(client_id)
        entry.upload.abort()
        entry.round.drop([client_id], reason, {client_id: Stage.UPLOAD.value})
        self._state.cond.notify_all()
        self._log.warning(
            "upload_given_up",
            client_id=client_id,
            client=entry.upload.client_name,
            round=entry.upload.round,
            reason=reason,
        )


def _mismatch(upload: Upload, send: pb.SendModel) -> str | None:
    """Say how a resumed SendModel differs from the upload it claims to continue."""
    first = upload.send
    if send.round != first.round or send.train_examples != first.train_examples:
        return "round or train_examples differ from the broken upload's"
    if send.update != first.update:
        return "its header differs from the broken upload's"
    if send.resume_offset != upload.received_bytes:
        return (
            f"it continues at byte {send.resume_offset}; the server holds "
            f"{upload.received_bytes} bytes"
        )
    return None
