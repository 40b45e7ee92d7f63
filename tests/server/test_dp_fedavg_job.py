"""DP-FedAvg through a whole job (fl-sim runs the server's own job): epsilon in every row, the
job ends finished before a round that would spend past the target, seeded noise reproduces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.server.privacy import job_epsilon
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig

DP = {
    "dp_noise_multiplier": 1.0,
    "dp_clip_norm": 0.5,
    "dp_population": 8,
    "clients_per_round": 4,
    "weighting": "uniform",
    "min_clients": 2,
}


def run(tmp_path: Path, name: str, **settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    config = SimConfig(
        clients=8, rounds=4, threads=1, workers=0, out=tmp_path / name, **{**DP, **settings}
    )
    result = simulate(config)
    rows = [
        json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]
    return result, rows


def test_every_round_reports_the_epsilon_the_accountant_gives(tmp_path: Path) -> None:
    result, rows = run(tmp_path, "a", dp_noise_seed=1)
    assert result.outcome.finished and result.outcome.rounds_completed == 4
    for row in rows[1:]:
        want = job_epsilon([(1.0, row["round"])], 4 / 8, 1e-5, "rdp")
        assert row["epsilon"] == pytest.approx(want, rel=1e-12)
    assert [r["epsilon"] for r in rows[1:]] == sorted(r["epsilon"] for r in rows[1:])


def test_the_job_ends_finished_before_the_round_that_would_pass_the_target(tmp_path: Path) -> None:
    two = job_epsilon([(1.0, 2)], 0.5, 1e-5, "rdp")
    three = job_epsilon([(1.0, 3)], 0.5, 1e-5, "rdp")
    target = (two + three) / 2  # two rounds fit, a third would not
    result, rows = run(tmp_path, "b", dp_noise_seed=1, dp_target_epsilon=target)
    assert result.outcome.finished and result.outcome.rounds_completed == 2
    assert rows[-1]["epsilon"] <= target and (tmp_path / "b" / "model.pt").exists()


def test_seeded_noise_reproduces_and_secret_noise_does_not(tmp_path: Path) -> None:
    run(tmp_path, "s1", dp_noise_seed=7)
    run(tmp_path, "s2", dp_noise_seed=7)
    run(tmp_path, "u1")
    run(tmp_path, "u2")

    def model(name: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / name / "model.pt", weights_only=True)

    assert all(torch.equal(model("s1")[k], model("s2")[k]) for k in model("s1"))
    assert not all(torch.equal(model("u1")[k], model("u2")[k]) for k in model("u1"))
