"""Log lines round their floats for people; the JSON stays one object per line."""

from __future__ import annotations

import io
import json

import structlog

from fedsilo.common.logging import configure_logging
from fedsilo.common.progress import _active_bars


def test_floats_in_log_lines_are_rounded_to_six_significant_digits(capsys) -> None:
    configure_logging("info", json=True)
    try:
        structlog.get_logger().info("round_done", train_loss=0.123456789123, seconds=12.0, n=3)
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip())
    assert line["train_loss"] == 0.123457 and line["seconds"] == 12.0 and line["n"] == 3


class _Recorder:
    """A stderr that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_log_line_and_its_newline_leave_in_one_write(monkeypatch) -> None:
    # Two writes (print's line, then its end) let a thread's line lose its newline to another
    # thread's write, or to a daemon's exit between them: the next line would be glued to it.
    recorder = _Recorder()
    monkeypatch.setattr("sys.stderr", recorder)
    configure_logging("info", json=True)
    try:
        structlog.get_logger().info("client_left", client="c1")
        structlog.get_logger().info("round_done", round=2)
    finally:
        structlog.reset_defaults()
    assert len(recorder.writes) == 2
    assert all(text.endswith("}\n") and text.count("\n") == 1 for text in recorder.writes)
    assert [json.loads(text)["event"] for text in recorder.writes] == ["client_left", "round_done"]


def test_lines_above_a_progress_bar_are_not_followed_by_blank_lines(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("info", json=False)
    _active_bars.add(1)  # as while a bar is drawn: lines go through tqdm.write
    try:
        structlog.get_logger().info("round_done", round=1)
        structlog.get_logger().info("round_done", round=2)
    finally:
        _active_bars.add(-1)
        structlog.reset_defaults()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all("round_done" in line for line in lines)
