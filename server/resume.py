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

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server import messages
from fedsilo.server.job_state import JobState
from fedsilo.server.parked import Parked, ParkedTable
from fedsilo.server.registry import Member, Stage, Work, WorkKind
from fedsilo.server.upload import Upload, UploadRefusedError

Log = structlog.typing.FilteringBoundLogger


class ParkedUploads:
    """The job's broken uploads, by client id, until resumed or expired."""

    def __init__(self, state: JobState, window: float, log: Log) -> None:
        self._state = state
        self._log = log
        self._parked: ParkedTable[Upload] = ParkedTable(window)
        # Uploaders the watch cut off for lack of progress, with its reason, until they close.
        self.stalled: dict[int, str] = {}

    @property
    def window(self) -> float:
        """Seconds a broken upload is kept; 0: never."""
        return self._parked.window

    def holds(self, client_id: int) -> bool:
        """Whether a broken upload of this client is kept."""
        return self._parked.holds(client_id)

    def park(self, upload: Upload, reason: str) -> bool:
        """Keep a broken upload for its client; False when it cannot be continued."""
        current = self._state.round
        if not upload.resumable or current is not upload.round_state:
            return False
        entry = self._parked.park(upload.client_id, upload, current, reason)
        if entry is None:
            return False
        self._state.cond.notify_all()  # a reconnect of this client may wait for it
        self._log.info(
            "upload_parked",
            client_id=upload.client_id,
            client=upload.client_name,
            round=upload.round,
            offset=upload.received_bytes,
            reason=reason,
            keep_seconds=round(entry.expires - time.monotonic(), 3),
        )
        return True

    def offer(self, client_id: int, hello: pb.Hello) -> pb.StreamPosition | None:
        """Say where a reconnecting client's upload goes on, or give it up if not named."""
        entry = self._parked.get(client_id)
        if entry is None:
            return None
        upload = entry.held
        asked = hello.resume_upload if hello.HasField("resume_upload") else None
        if asked is None or asked.round != upload.round or asked.offset > upload.received_bytes:
            self._parked.pop(client_id)
            self._give_up(entry, f"{entry.reason}; reconnected without resuming the upload")
            return None
        return messages.stream_position(upload.round, upload.received_bytes)

    def resume(self, member: Member, send: pb.SendModel, log: Log) -> Upload:
        """Hand the parked upload that a resumed SendModel continues to its new session."""
        cid = member.client_id
        entry = self._parked.pop(cid)
        current = self._state.round
        if entry is None or current is not entry.round or not current.fold.is_open_for(cid):
            if entry is not None:
                entry.held.abort()
            log.info("update_ignored", round=send.round, reason="no broken upload to resume")
            raise UploadRefusedError(
                int(pb.WRONG_ROUND),
                f"no broken upload of round {send.round} to continue",
                leaves_round=False,
                tell_client=False,
            )
        upload = entry.held
        problem = _mismatch(upload, send)
        if problem is not None:
            self._give_up(entry, f"resumed upload refused: {problem}")
            raise UploadRefusedError(int(pb.BAD_TENSOR_STREAM), problem, leaves_round=True)
        upload.adopt(member, log)
        member.work = Work(WorkKind.TRAIN, upload.round)
        member.move(Stage.UPLOAD)
        log.info("upload_resumed", round=upload.round, offset=send.resume_offset)
        return upload

    def expire(self) -> None:
        """Give up broken uploads past their time or whose round is over."""
        over, lapsed = self._parked.sweep(self._state.round)
        for entry in over:
            entry.held.abort()  # the round already counted it out
        for entry in lapsed:
            self._give_up(entry, self._parked.lapsed_reason(entry))

    def _give_up(self, entry: Parked[Upload], reason: str) -> None:
        """Give up an upload already taken out of the table: its client leaves the round."""
        cid = entry.client_id
        entry.held.abort()
        entry.round.drop([cid], reason, {cid: Stage.UPLOAD.value})
        self._state.cond.notify_all()
        self._log.warning(
            "upload_given_up",
            client_id=cid,
            client=entry.held.client_name,
            round=entry.held.round,
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
