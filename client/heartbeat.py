"""Heartbeats while a client works: one long-lived thread, woken when local work starts.

Starting a thread for each round's training costs more than a tiny model's whole round; this
pacer's thread sleeps between rounds and, while work runs, calls ``beat`` every interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class HeartbeatPacer:
    """Calls a function every ``interval`` seconds while inside ``running``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._beat: Callable[[], None] | None = None
        self._interval = 0.0
        self._work = 0  # counts starts of work, so a new one restarts the interval
        self._thread: threading.Thread | None = None
        self._beating = False

    @contextmanager
    def running(self, beat: Callable[[], None], interval: float) -> Iterator[None]:
        """Beat every ``interval`` seconds (the first after one interval) until the body ends."""
        if interval <= 0:
            yield
            return
        with self._cond:
            self._beat, self._interval = beat, interval
            self._work += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._beat = None
                self._cond.notify_all()
                # Like a joined thread: no beat goes out after the work (and its result) ended.
                while self._beating:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._beat is None:
                    self._cond.wait()
                work, interval = self._work, self._interval
                due = time.monotonic() + interval
                while self._beat is not None and self._work == work:
                    remaining = due - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                        continue
                    beat = self._beat
                    due += interval
                    self._beating = True
                    self._cond.release()  # beat outside the lock: sending may block or call back
                    try:
                        beat()
                    finally:
                        self._cond.acquire()
                        self._beating = False
                        self._cond.notify_all()
