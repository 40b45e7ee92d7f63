"""Deadlines for the states of a stream that no round watches: before Hello, before Ready, while
the server swallows a refused stream.

A stream that never says Hello holds a slot of the server (and two threads) for nothing; one that
joined but never gets ready, or stops in the middle of a stream it must finish, too. The watch
wakes a few times a second and cuts such streams off: before Hello after ``HANDSHAKE_SECONDS``,
the others after ``progress_timeout`` without progress (heartbeats count: a client loading a big
dataset says it is alive). Rounds and the final evaluation watch their own clients (Coordinator).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

from fedsilo.server.job_state import JobState
from fedsilo.server.registry import Stage

HANDSHAKE_SECONDS = 10.0  # from a stream's opening to its Hello: a round trip and a TLS check
WATCHED_STAGES = (Stage.JOINED, Stage.DISCARDING)


class SessionWatch:
    """A thread that cuts off streams stuck before Hello, before Ready or mid-discard."""

    def __init__(
        self,
        state: JobState,
        progress_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._state = state
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
        now = time.monotonic()
        overdue: list[tuple[Any, str]] = []
        with self._state.cond:
            for session, opened in list(self._state.pending.items()):
                if now - opened > self._handshake:
                    del self._state.pending[session]
                    overdue.append((session, f"no Hello within {self._handshake:g}s"))
            limit = self._progress_timeout
            for member in self._state.registry.members():
                idle = member.session.progress.idle_seconds(uploading=False)
                if member.stage in WATCHED_STAGES and idle > limit:
                    reason = f"no progress for {limit:g}s while {member.stage.value}"
                    overdue.append((member.session, reason))
        return overdue
