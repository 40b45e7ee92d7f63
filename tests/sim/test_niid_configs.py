"""configs/niid/: one fl-sim config per NIID-Bench cell (Fashion-MNIST, Dir(0.5) and #C=2 x
FedAvg, FedProx mu in {0.001, 0.01, 0.1, 1}, SCAFFOLD, FedNova), each with the benchmark's
settings; and a two-round smoke run of each algorithm on a few images per client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsilo.common.settings import load_config, read_config_file
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.tasks.datasets.fmnist import files_present

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "niid"
PARTITIONS = {
    "dir0.5": {"partition": "dirichlet", "beta": 0.5},
    "c2": {"partition": "labels", "labels": 2},
}
ALGORITHMS = {
    "fedavg": ("fedavg", 0.0),
    "fedprox-mu0.001": ("fedavg", 0.001),
    "fedprox-mu0.01": ("fedavg", 0.01),
    "fedprox-mu0.1": ("fedavg", 0.1),
    "fedprox-mu1": ("fedavg", 1.0),
    "scaffold": ("scaffold", 0.0),
    "fednova": ("fednova", 0.0),
}
CELLS = [(p, a) for p in PARTITIONS for a in ALGORITHMS]


def load(path: Path, **overrides: object) -> SimConfig:
    return load_config(SimConfig, overrides, path, environ={})


def test_there_is_one_config_per_cell_and_no_other() -> None:
    found = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.toml"))
    assert found == sorted(f"{p}/{a}.toml" for p, a in CELLS)


@pytest.mark.parametrize(("partition", "algorithm"), CELLS)
def test_each_cell_has_niid_benchs_settings(partition: str, algorithm: str) -> None:
    config = load(CONFIGS / partition / f"{algorithm}.toml")
    strategy, mu = ALGORITHMS[algorithm]
    assert (config.task, config.strategy, config.proximal_mu) == ("fmnist", strategy, mu)
    assert (config.clients, config.min_clients, config.clients_per_round) == (10, 10, 10)
    assert (config.rounds, config.local_epochs, config.batch_size) == (50, 10, 64)
    assert (config.optimizer, config.learning_rate, config.momentum) == ("sgd", 0.01, 0.9)
    assert config.weight_decay == 1e-5 and not config.nesterov
    assert config.task_options == {"clients": 10, **PARTITIONS[partition], "holdout": 0.0}


# One partition per algorithm keeps the smoke runs to seconds; both partitions are used.
SMOKE = [("dir0.5" if i % 2 == 0 else "c2", a) for i, a in enumerate(ALGORITHMS)]


@pytest.mark.skipif(not files_present(), reason="Fashion-MNIST is not installed (make datasets)")
@pytest.mark.parametrize(("partition", "algorithm"), SMOKE)
def test_two_rounds_of_each_algorithm_run_on_a_few_images(
    partition: str, algorithm: str, tmp_path: Path
) -> None:
    path = CONFIGS / partition / f"{algorithm}.toml"
    options = {**read_config_file(path)["task_options"], "subset": 24}
    config = load(
        path,
        rounds=2,
        local_epochs=1,
        task_options=options,
        threads=1,
        workers=0,
        out=tmp_path / "run",
    )
    result = simulate(config)
    assert result.outcome.finished and result.outcome.rounds_completed == 2
    assert result.train_examples <= 10 * 24
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(0 <= row["central_accuracy"] <= 1 and row["central_examples"] == 24 for row in rows)
    assert all(len(row["participants"]) == 10 for row in rows[1:])
