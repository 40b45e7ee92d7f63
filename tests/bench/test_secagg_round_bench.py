"""secagg_round_bench.py end to end, smallest case: a plain and a secure job, and their ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_pair_records_both_jobs_and_the_ratios(tmp_path: Path) -> None:
    out = tmp_path / "secagg-rounds.json"
    subprocess.run(
        [
            *(sys.executable, str(REPO / "bench" / "secagg_round_bench.py"), "--which", "tiny"),
            *("--tiny-clients", "3", "--rounds", "2", "--repeats", "1", "--job-timeout", "60"),
            *("--json", str(out)),
        ],
        check=True,
        timeout=110,
        capture_output=True,
    )
    tiny = json.loads(out.read_text())["cases"]["tiny"]
    assert tiny["clients"] == 3
    for mode in ("plain", "secagg"):
        assert tiny[mode]["round_s"]["median"] > 0 and tiny[mode]["bytes_up"]["median"] > 0
    # A masked upload is one uint32 per float32 weight: the same bytes within the framing.
    assert 0.9 < tiny["ratio"]["bytes_up"]["median"] < 1.1
