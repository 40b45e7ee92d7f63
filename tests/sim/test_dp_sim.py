"""fl-sim with record-level DP-SGD: every simulated silo runs its own budget, in any backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import HostSettings
from fedsilo.tasks.privacy_budget import DpSgdPolicy


def test_host_settings_carry_the_silos_dp_policy_to_a_worker() -> None:
    policy = DpSgdPolicy(delta=1e-6, max_grad_norm=0.5, epsilon=3.0)
    settings = HostSettings("cpu", 1, "warning", "synthetic", {}, policy.model_dump())
    again = HostSettings.from_json(settings.to_json())
    assert again == settings and again.apply().policy.dp == policy
    plain = HostSettings.from_json(HostSettings("cpu", 1, "warning", "synthetic").to_json())
    assert plain.apply().policy.dp is None


@pytest.mark.parametrize("workers", [0, 2])
def test_every_simulated_silo_reports_its_epsilon_within_its_budget(
    tmp_path: Path, workers: int
) -> None:
    config = SimConfig(
        clients=2,
        rounds=2,
        threads=1,
        workers=workers,
        task_options={"max_samples": 60},
        batch_size=16,
        record_dp_epsilon=2.0,
        out=tmp_path / "run",
    )
    result = simulate(config)
    assert result.outcome.finished and not result.failures
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    epsilons = [[c["dp_epsilon"] for c in row["clients"]] for row in rows[1:]]
    assert all(len(round_) == 2 for round_ in epsilons)
    assert all(0 < a < b <= 2.0 for a, b in zip(epsilons[0], epsilons[1], strict=True))
    assert min(epsilons[1]) > 1.9  # planned for the job's 2 rounds: the budget is spent
