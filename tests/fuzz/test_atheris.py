"""Run the atheris codec fuzzer for a bounded number of inputs (longer in make test-slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris did not install on this platform")

HARNESS = Path(__file__).with_name("atheris_codec.py")
REPO = Path(__file__).resolve().parents[2]


def fuzz(runs: int, timeout: float) -> int:
    """Run the harness for ``runs`` inputs; return how many it executed (fails on a crash)."""
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={runs}", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.findall(r"Done (\d+) runs", result.stderr)
    assert done, result.stderr[-2000:]
    return int(done[-1])


def test_codec_survives_a_short_atheris_run() -> None:
    assert fuzz(20_000, timeout=300) == 20_000


@pytest.mark.slow
def test_codec_survives_a_long_atheris_run() -> None:
    runs = fuzz(1_000_000, timeout=1800)
    print("ATHERIS", json.dumps({"runs": runs}))
    assert runs == 1_000_000
