"""round_bench.py end to end, smallest case: real daemons, 2 clients, 2 rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_case_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "round_bench.py"),
            "--which",
            "many",
            "--counts",
            "2",
            "--rounds",
            "2",
            "--job-timeout",
            "40",
            "--json",
            str(out),
        ],
        check=True,
        timeout=110,  # under pytest's 120 s: 40 s job + 40 s clients + stops
        capture_output=True,
    )
    report = json.loads(out.read_text())
    figures = report["cases"]["many-2"]
    assert figures["clients"] == 2
    assert figures["rounds_measured"] == 1
    for key in ("round_s", "cycle_s", "join_s", "server_cpu_s", "clients_cpu_s"):
        assert set(figures[key]) == {"median", "min", "max"}, key
    assert figures["server_peak_rss_mib"] > 0
    assert figures["client_peak_rss_mib"] > 0
