"""transfer_bench.py's fedsilo job end to end, smallest case: the boundaries it times exist."""

from __future__ import annotations

from pathlib import Path

from bench.transfer_bench import fedsilo_job


def test_a_tiny_job_times_every_round_both_ways(tmp_path: Path) -> None:
    # The benchmark times the client's model_received and the server's round_started and
    # update_received log events: a daemon that stops logging one breaks every figure.
    figures = fedsilo_job(0.25, tmp_path, rounds=2, timeout=100)
    for key in ("down_s", "up_s", "round_s"):
        assert len(figures[key]) == 2 and all(seconds > 0 for seconds in figures[key]), key
    assert figures["server_peak_rss_mib"] > 0 and figures["client_peak_rss_mib"] > 0
