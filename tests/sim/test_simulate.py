"""fl-sim end to end in one process: sizes reported, sampling, TensorBoard, the progress hook."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_simulation_reports_sizes_samples_clients_and_calls_the_progress_hook(
    tmp_path: Path,
) -> None:
    seen: list[tuple[int, int, int]] = []
    config = SimConfig(
        clients=6, clients_per_round=3, rounds=3, seed=4, threads=1, out=tmp_path / "run"
    )
    result = simulate(config, on_progress=seen.append)
    assert result.outcome.finished and result.clients == 6
    assert result.train_examples > 0 and result.test_examples > 0
    written = rows(tmp_path / "run")
    assert [row["round"] for row in written] == [0, 1, 2, 3]
    assert all(len(row["participants"]) == 3 for row in written[1:])
    assert len({tuple(row["participants"]) for row in written[1:]}) > 1  # a new draw per round
    assert seen and seen[-1][0] == 3


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
def test_tensorboard_events_are_written_for_each_round(tmp_path: Path) -> None:
    simulate(SimConfig(clients=2, rounds=2, threads=1, tensorboard=True, out=tmp_path / "run"))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
