"""fl-sim --backend ray on a local Ray instance (started once for this module, two CPUs):
the same model bit for bit as the local backend, and failing clients reported and dropped."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import TRAINING
from fedsilo.sim.summary import read_rows

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="the ray extra is not installed (pip install 'fedsilo[ray]'; make install does)",
)

PROBE = "tests.sim.probe_task:ProbeTask"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One new local Ray instance for the module; simulate() uses it and leaves it running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def config(out: Path, **fields: Any) -> SimConfig:
    base: dict[str, Any] = {"task": PROBE, "clients": 4, "rounds": 2, "seed": 7, "threads": 1}
    return SimConfig(**{**base, **fields, "out": out})


def test_ray_actors_and_the_local_backend_end_with_the_same_model_bit_for_bit(tmp_path: Path):
    common: dict[str, Any] = {"clients_per_round": 3, "compression": "topk"}
    ray_run = simulate(config(tmp_path / "ray", backend="ray", workers=2, **common))
    assert ray_run.outcome.finished
    assert (ray_run.backend, ray_run.workers, ray_run.nodes) == ("ray", 2, 1)
    assert (ray_run.train_examples, ray_run.test_examples) == (4 * 48, 4 * 12)
    # In process: test_backends.py shows that 0, 1 and 2 local workers give the same bits.
    assert simulate(config(tmp_path / "local", workers=0, **common)).outcome.finished
    assert [r.get("participants") for r in read_rows(tmp_path / "ray")] == [
        r.get("participants") for r in read_rows(tmp_path / "local")
    ]
    ours = torch.load(tmp_path / "ray" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_a_client_that_raises_and_the_clients_of_a_dead_actor_are_dropped(tmp_path: Path):
    # Actor 0 hosts clients 0 and 2, actor 1 hosts 1 and 3: client 1 raises in training,
    # client 2 kills actor 0's process, so client 0 goes too; client 3 finishes the job.
    out = tmp_path / "run"
    seen = []
    result = simulate(
        config(out, backend="ray", workers=2, task_options={"fail": "train@1 die@2"}),
        on_failure=seen.append,
    )
    assert result.outcome.finished
    assert seen == result.failures
    by_client = {failure.index: failure for failure in result.failures}
    assert sorted(by_client) == [0, 1, 2]
    assert by_client[1].stage == TRAINING
    assert by_client[1].error.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert "probe_task.py" in by_client[1].traceback
    for index in (0, 2):
        assert by_client[index].error.startswith("Ray actor 0 (node "), by_client[index]
        assert " died: " in by_client[index].error
    rows = read_rows(out)
    assert {1, 2} <= {d["client_id"] for d in rows[1]["dropped"]}
    assert rows[2]["participants"] == [3]
