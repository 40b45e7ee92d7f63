"""Deadlines for every state of a stream, measured in progress, never in total time.

A stream that never says Hello holds a slot of the server (and two threads) for nothing; one that
joined but never gets ready, stops in the middle of a download, a training, an upload or a stream
the server swallows, too. The watch wakes a few times a second and cuts such streams off: before
Hello after ``HANDSHAKE_SECONDS``; in every other state after ``progress_timeout`` with nothing
moving (a message in, a frame out; while uploading, only tensor bytes count, so heartbeats
cannot hold a round open). A client doing work for a round or the final evaluation is dropped
from it, with the reason and the phase, before its stream is cut. Idle clients and uploads the
server itself keeps waiting in line have no deadline. An uploader that stalls is cut off but
stays in its round when broken transfers are kept (``server/transfers.py``): its transfer is
parked when its stream closes, and the watch gives kept transfers up when their time is over.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

from fedsilo.server.job_state import JobState
from fedsilo.server.registry import Member, Stage
from fedsilo.server.transfers import TRANSFERS, KeptTransfers

HANDSHAKE_SECONDS = 10.0  # from a stream's opening to its Hello: a round trip and a TLS check
# Idle clients have nothing to do; the others there wait for the server itself.
UNWATCHED_STAGES = (Stage.IDLE, Stage.QUEUED, Stage.SECAGG_WAIT)


class SessionWatch:
    """A thread that cuts off streams stuck before Hello, before Ready or mid-discard."""

    def __init__(
        self,
        state: JobState,
        progress_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
        transfers: KeptTransfers | None = None,
    ) -> None:
        self._state = state
        self._transfers = transfers
        self._handshake = min(HANDSHAKE_SECONDS, progress_timeout)
        self._progress_timeout = progress_timeout
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-watch", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (returns once the thread has ended)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        step = min(1.0, self._handshake / 4)
        while not self._stop.wait(step):
            for session, reason in self._overdue():
                self._log.warning(
                    "stream_cut_off", peer=getattr(session, "peer", "?"), reason=reason
                )
                session.cut_off()

    def _overdue(self) -> list[tuple[Any, str]]:
        """Find the streams past their deadline; drop their clients from their work (cond)."""
        now = time.monotonic()
        overdue: list[tuple[Any, str]] = []
        state = self._state
        with state.cond:
            if self._transfers is not None:
                self._transfers.expire()
            for session, opened in list(state.pending.items()):
                if now - opened > self._handshake:
                    del state.pending[session]
                    reason = f"no Hello within {self._handshake:g}s"
                    self._log.warning(
                        "stream_cut_off", peer=getattr(session, "peer", "?"), reason=reason
                    )
                    overdue.append((session, reason))
            limit = self._progress_timeout
            for member in state.registry.members():
                if member.stage in UNWATCHED_STAGES:
                    continue
                uploading = member.stage is Stage.UPLOAD
                if member.session.progress.idle_seconds(uploading) <= limit:
                    continue
                reason = f"stalled: no progress for {limit:g}s"
                if not self._parks(member, reason, limit):
                    self._leave_work(member, reason)
                self._log.warning(
                    "client_cut_off",
                    client_id=member.client_id,
                    client=member.name,
                    phase=member.stage.value,
                )
                overdue.append((member.session, reason))
        return overdue

    def _parks(self, member: Member, reason: str, limit: float) -> bool:
        """Whether a stalled up- or downloader stays in its round for its transfer to be parked
        when its stream closes (cond held).

        Bounded: one whose stream has not closed within the resume window after the cut-off is
        dropped after all.
        """
        kept = self._transfers
        if kept is None or kept.window <= 0 or member.stage not in TRANSFERS:
            return False
        if member.session.progress.idle_seconds(True) > limit + kept.window:
            return False
        kept.stalled[member.client_id] = reason
        return True

    def _leave_work(self, member: Member, reason: str) -> None:
        """Drop a stalled client from the round or final evaluation it owes work to (cond held)."""
        state = self._state
        cid = member.client_id
        if state.round is not None and state.round.drop([cid], reason, {cid: member.stage.value}):
            member.work = None
        if state.final is not None and cid in state.final.expected:
            state.final.expected.discard(cid)
            member.work = None
        state.cond.notify_all()
