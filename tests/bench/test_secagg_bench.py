"""The secure-aggregation benchmark runs end to end and records every figure it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_small_run_prints_and_records_the_projection(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "secagg_bench.py"),
            "--mib",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "projection, 1 MiB x 4 and tiny x 50" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("mask_expansion_gbs", "client_mask_gbs", "server_sum_gbs", "plain_numpy_gbs"):
        assert figures[key]["median"] > 0, key
    projection = figures["projection"]
    assert projection["big_added_s"] > 0 and projection["tiny_added_s"] > 0
    assert 1.0 < projection["big_bytes_x"] < 1.05  # one weight word and the key stages
