"""A bound on how long a client waits for a server that makes no progress.

While the client waits for the server (between rounds, inside a model stream), every frame in
either direction counts as progress; while it works (training, evaluating) the clock is
stopped. When nothing moved for ``timeout`` seconds, ``on_expiry`` is called once (the session
cancels its stream) and ``expired`` turns True. One thread per watch, polling a few times per
timeout: frames do not pay for a wake-up each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SilenceWatch:
    """Calls ``on_expiry`` once after ``timeout`` seconds of waiting without progress."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._on_expiry: Callable[[], object] = lambda: None
        self._cond = threading.Condition()
        self._waiting_since: float | None = None  # None while the client works
        self._stopped = False
        self.expired = False
        self._thread = threading.Thread(target=self._run, name="silence-watch", daemon=True)

    def start(self, on_expiry: Callable[[], object]) -> None:
        """Start watching; ``on_expiry`` runs on the watch's thread."""
        self._on_expiry = on_expiry
        self._thread.start()

    def waiting(self) -> None:
        """The client now waits for the server: progress is measured from here."""
        with self._cond:
            self._waiting_since = time.monotonic()

    def progress(self) -> None:
        """A frame moved (either way): the wait starts again, if the client is waiting."""
        with self._cond:
            if self._waiting_since is not None:
                self._waiting_since = time.monotonic()

    def working(self) -> None:
        """The client works locally: the server owes it nothing meanwhile."""
        with self._cond:
            self._waiting_since = None

    def stop(self) -> None:
        """End the watch (the session is over)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        poll = min(1.0, self.timeout / 4)
        with self._cond:
            while not self._stopped:
                since = self._waiting_since
                if since is not None and time.monotonic() - since >= self.timeout:
                    self.expired = True
                    break
                self._cond.wait(poll)
            else:
                return
        self._on_expiry()
