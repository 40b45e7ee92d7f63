"""fl-sim and a networked fl-server + fl-client run of the same config end with the same model,
bit for bit: the simulator runs the server's own job loop and the client's own protocol."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import BIN, Daemons, free_port, read_metrics, wait_for

JOB = 2
CLIENTS = 4
COMMON = (
    "--rounds",
    "3",
    "--seed",
    "3",
    "--clients-per-round",
    "2",
    "--strategy",
    "fedavg",
    "--local-epochs",
    "2",
    "--learning-rate",
    "0.05",
)


# In `make test` through SCAFFOLD's restarts: tests/integration/test_scaffold_fednova.py.
@pytest.mark.slow
def test_simulated_and_networked_runs_end_with_the_same_model(
    daemons: Daemons, tmp_path: Path
) -> None:
    sim_dir, net_dir = tmp_path / "sim", tmp_path / "net"
    simulated = subprocess.run(
        [
            str(BIN / "fl-sim"),
            *COMMON,
            "--clients",
            str(CLIENTS),
            "--min-clients",
            "2",
            "--threads",
            "1",
            "--out",
            str(sim_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert simulated.returncode == 0, simulated.stderr[-2000:]
    assert f"{CLIENTS} clients" in simulated.stdout

    port = free_port()
    server = daemons.server(
        JOB,
        port - JOB,
        *COMMON,
        "--min-clients",
        "2",
        "--start-clients",
        str(CLIENTS),
        "--out",
        str(net_dir),
    )
    clients = []
    for index in range(CLIENTS):  # one at a time, so that client ids follow this order
        clients.append(daemons.client(port, f"org-{index}"))
        wait_for(lambda i=index: server.has_event("client_joined", client_id=i), 60, "join")
    assert server.wait(timeout=120) == 0, server.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()

    sim_rows, net_rows = read_metrics(sim_dir), read_metrics(net_dir)
    assert [r.get("participants") for r in sim_rows] == [r.get("participants") for r in net_rows]
    assert all(len(r["participants"]) == 2 for r in sim_rows[1:])  # sampling really sampled
    sim_model = torch.load(sim_dir / "model.pt", weights_only=True)
    net_model = torch.load(net_dir / "model.pt", weights_only=True)
    assert sim_model.keys() == net_model.keys()
    for name in sim_model:
        assert torch.equal(sim_model[name], net_model[name]), name
