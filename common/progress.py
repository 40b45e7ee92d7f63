"""A progress bar for long work on a terminal: rounds done, and the current round's updates.

On a terminal both daemons and fl-sim show ``rounds 3/20 | clients 7/10`` at the bottom of
stderr while their log lines scroll above it (``BarAwareStream`` writes them through tqdm, so the
bar is redrawn below each line). Off a terminal nothing is drawn and the log stays JSON.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

Progress = tuple[int, int, int]  # rounds completed, updates in this round, clients selected
REFRESH_SECONDS = 0.2


class _ActiveBars:
    """How many bars are drawn now; while any is, log lines go through tqdm.write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta

    def __bool__(self) -> bool:
        return self._count > 0


_active_bars = _ActiveBars()


class BarAwareStream:
    """A text stream for log lines that keeps a live progress bar at the bottom."""

    def __init__(self, target: TextIO) -> None:
        self._target = target

    def write(self, text: str) -> int:
        """Write ``text``; above the bar when one is drawn."""
        if _active_bars:
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=self._target)
        else:
            self._target.write(text)
        return len(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self._target.flush()

    def isatty(self) -> bool:
        """Whether the underlying stream is a terminal."""
        return self._target.isatty()


@contextmanager
def round_progress(rounds: int, read: Callable[[], Progress]) -> Iterator[None]:
    """Draw a bar of ``read()`` every REFRESH_SECONDS while the body runs, on a terminal only."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    bar: Any = tqdm(total=rounds, unit="round", file=sys.stderr)
    done = threading.Event()

    def draw() -> None:
        completed, delivered, selected = read()
        bar.update(completed - bar.n)
        bar.set_postfix_str(f"clients {delivered}/{selected}", refresh=True)

    def refresh() -> None:
        while not done.wait(REFRESH_SECONDS):
            draw()

    _active_bars.add(1)
    drawer = threading.Thread(target=refresh, name="progress", daemon=True)
    drawer.start()
    try:
        yield
    finally:
        done.set()
        drawer.join()
        draw()
        bar.close()
        _active_bars.add(-1)
