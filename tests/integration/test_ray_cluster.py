"""fl-sim --backend ray across two Ray nodes on loopback, started as the README says:
``ray start --head`` and ``ray start --address``, then the same fl-sim command. The clients run
in one actor per node and the job ends with the model of the local backend, bit for bit."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from tests.integration.conftest import BIN, free_port, wait_for

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="the ray extra is not installed (pip install 'fedsilo[ray]'; make install does)",
)

STARTED = "Ray runtime started."
COMMON = ("--task", "digits", "--clients", "4", "--rounds", "2", "--clients-per-round", "3")
COMMON += ("--seed", "2", "--threads", "1", "--learning-rate", "0.05")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End a `ray start --block` and every Ray process it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    # What the SIGTERM left (the head's gcs_server and monitor linger): the group is ours.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=20)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head and a second node on 127.0.0.1, one CPU each; their address and env."""
    # Ray's socket paths under the temp dir must fit in 107 bytes: a short folder of our own,
    # which also keeps this cluster out of /tmp/ray, where `ray.init()` looks for one.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # every node and the driver share one token (Ray's docs)
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", temp, "--block"]
    started = []
    try:
        for role, argv in (
            ("head", ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"]),
            ("node", ["--address", address]),
        ):
            log = tmp_path / f"ray-{role}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(BIN / "ray"), "start", *argv, *common],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            started.append(process)
        for role in ("head", "node"):
            log = tmp_path / f"ray-{role}.log"
            wait_for(lambda log=log: STARTED in log.read_text(), 180, f"the Ray {role}")
        yield address, env
    finally:
        for process in reversed(started):
            stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


def test_fl_sim_runs_its_clients_on_two_ray_nodes_and_ends_with_the_local_model(
    two_nodes: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = two_nodes
    ray_dir = tmp_path / "ray"
    done = subprocess.run(
        [str(BIN / "fl-sim"), *COMMON, "--backend", "ray", "--ray-address", address,
         "--workers", "2", "--ray-num-cpus", "1", "--out", str(ray_dir)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray backend, in 2 Ray actors on 2 nodes, 1 torch thread each" in done.stdout

    local = SimConfig(
        task="digits",
        clients=4,
        rounds=2,
        clients_per_round=3,
        seed=2,
        threads=1,
        learning_rate=0.05,
        workers=0,
        out=tmp_path / "local",
    )
    assert simulate(local).outcome.finished
    ours = torch.load(ray_dir / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
