"""Log lines round their floats for people; the JSON stays one object per line."""

from __future__ import annotations

import json

import structlog

from fedsilo.common.logging import configure_logging


def test_floats_in_log_lines_are_rounded_to_six_significant_digits(capsys) -> None:
    configure_logging("info", json=True)
    try:
        structlog.get_logger().info("round_done", train_loss=0.123456789123, seconds=12.0, n=3)
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip())
    assert line["train_loss"] == 0.123457 and line["seconds"] == 12.0 and line["n"] == 3
