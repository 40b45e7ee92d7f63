"""The job's broken transfers, kept for their clients: what the job and the watch ask of them.

One object over ``ParkedUploads`` (``server/resume.py``) and ``ParkedDownloads``
(``server/resume_download.py``), so that the job's admission, close and upload paths each make
one call. Every method but ``resume_upload`` runs with the job's condition held.
"""

from __future__ import annotations

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.job_state import JobState
from fedsilo.server.registry import Member, SessionHandle, Stage
from fedsilo.server.resume import ParkedUploads
from fedsilo.server.resume_download import ParkedDownloads
from fedsilo.server.upload import Upload, UploadRefusedError

Log = structlog.typing.FilteringBoundLogger

REPLACED_GRACE = 5.0  # seconds a reconnect waits for its old stream's transfer to be parked
TRANSFERS = (Stage.UPLOAD, Stage.DOWNLOAD)


class KeptTransfers:
    """Broken up- and downloads, each kept ``window`` seconds at most (0: none is kept)."""

    def __init__(self, state: JobState, window: float, log: Log) -> None:
        self._state = state
        self.uploads = ParkedUploads(state, window, log)
        self.downloads = ParkedDownloads(state, window, log)

    @property
    def window(self) -> float:
        """Seconds a broken transfer is kept."""
        return self.uploads.window

    @property
    def stalled(self) -> dict[int, str]:
        """Transferring clients the watch cut off, with its reason, until their stream closes."""
        return self.uploads.stalled

    def expire(self) -> None:
        """Give up kept transfers past their time or whose round is over."""
        self.uploads.expire()
        self.downloads.expire()

    def before_admit(self, client_id: int) -> None:
        """A client reconnects while its old stream still transfers: end that stream and wait
        (a bounded time) until its transfer is parked, so that the new session can go on."""
        old = self._state.registry.get(client_id)
        if old is None or old.stage not in TRANSFERS or self.window <= 0:
            return
        old.session.cut_off()
        self._state.cond.wait_for(
            lambda: self._state.registry.get(client_id) is not old, timeout=REPLACED_GRACE
        )

    def after_admit(self, member: Member, hello: pb.Hello) -> pb.StreamPosition | None:
        """Take what a new session's Hello says; return where its upload goes on, if anywhere."""
        member.takes_acks = hello.takes_upload_acks
        self.downloads.offer(member, hello)
        return self.uploads.offer(member.client_id, hello)

    def closed(self, member: Member | None, upload: Upload | None) -> tuple[bool, str]:
        """Keep what a closed stream broke off; return whether its client keeps its place in
        the round, and the reason to drop it with otherwise."""
        reason = "disconnected"
        if member is not None:
            reason = self.uploads.stalled.pop(member.client_id, reason)
        if upload is not None and (
            member is None
            or member.stage is not Stage.UPLOAD
            or not self.uploads.park(upload, reason)
        ):
            upload.abort()
        if member is None:
            return False, reason
        cid = member.client_id
        kept = self.uploads.holds(cid) or self.downloads.holds(cid)
        return kept or self.downloads.park(member, reason), reason

    def resume_upload(
        self, client_id: int, session: SessionHandle, send: pb.SendModel, log: Log
    ) -> Upload:
        """Hand a broken upload to the session whose SendModel continues it (takes cond)."""
        with self._state.cond:
            member = self._state.registry.current(client_id, session)
            if member is None:
                raise UploadRefusedError(
                    int(pb.WRONG_ROUND), "no session", leaves_round=False, tell_client=False
                )
            return self.uploads.resume(member, send, log)
