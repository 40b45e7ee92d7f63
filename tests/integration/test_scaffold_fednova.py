"""SCAFFOLD and FedNova through real fl-server and fl-client processes end bit for bit where
fl-sim ends; SCAFFOLD's control variates survive the server's kill -9 and --resume and the
clients' kill -9 and restart (the server's c in its checkpoint, each client's c_i on disk)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import BIN, Daemon, Daemons, free_port, read_metrics, wait_for

JOB = 9
CLIENTS = 2
# One thread, as each daemon; the clients in fl-sim's own process (no worker start-up).
SIM_FLAGS = ("--clients", str(CLIENTS), "--threads", "1", "--workers", "0")
# fl-sim, then a killed and a resumed federation: longer than one run's default limit.
TIMEOUT = 360


def common(strategy: str) -> tuple[str, ...]:
    return (
        "--strategy",
        strategy,
        "--rounds",
        "3",
        "--seed",
        "4",
        "--local-epochs",
        "2",
        "--batch-size",
        "16",
        "--learning-rate",
        "0.05",
        "--momentum",
        "0.9",
        "--min-clients",
        str(CLIENTS),
    )


def simulated(strategy: str, out: Path) -> dict[str, torch.Tensor]:
    done = subprocess.run(
        [str(BIN / "fl-sim"), *common(strategy), *SIM_FLAGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out / "model.pt", weights_only=True)


def start_clients(daemons: Daemons, server: Daemon, port: int) -> list[Daemon]:
    """org-a, then org-b once org-a has its id: the same ids (partitions) as fl-sim's."""
    first = daemons.client(port, "org-a", "--out", str(daemons.workdir / "org-a"))
    wait_for(
        lambda: (
            server.has_event("client_joined", client="org-a") or server.process.poll() is not None
        ),
        60,
        "org-a to join",
    )
    return [first, daemons.client(port, "org-b", "--out", str(daemons.workdir / "org-b"))]


def assert_same(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


@pytest.mark.timeout(TIMEOUT)
def test_scaffold_survives_server_and_client_restarts_and_equals_fl_sim(
    daemons: Daemons, tmp_path: Path
) -> None:
    expected = simulated("scaffold", tmp_path / "sim")
    port = free_port()
    out = tmp_path / "net"
    marker = tmp_path / "killed.json"
    # Killed as org-b starts uploading round 2: org-b has already saved its round-2 c_i, which
    # the replayed round 2 must not use.
    kill_at = [sys.executable, "-m", "tests.integration.kill_at", str(marker), "upload_started"]
    kill_at += ["round=2", "client=org-b", "--"]
    flags = (*common("scaffold"), "--log-level", "debug", "--out", str(out))
    server = daemons.start(
        "fl-server",
        *("--job-id", str(JOB), "--port-base", str(port - JOB), "--host", "127.0.0.1"),
        *flags,
        name="killed",
        prefix=kill_at,
    )
    clients = start_clients(daemons, server, port)
    assert server.wait(timeout=120) == -signal.SIGKILL, server.tail()
    for client in clients:  # every client dies too: only what is on disk is left
        client.process.send_signal(signal.SIGKILL)
        client.process.wait(timeout=10)
    saved = sorted(p.name for p in (tmp_path / "org-b").rglob("round-*.cv"))
    assert saved == ["round-000001.cv", "round-000002.cv"], saved

    resumed = daemons.server(JOB, port - JOB, *flags, "--resume", name="resumed")
    clients = start_clients(daemons, resumed, port)
    assert resumed.wait(timeout=120) == 0, resumed.tail()
    for client in clients:
        assert client.wait(timeout=60) == 0, client.tail()
    # Round 1's checkpoint is written in the background while round 2 runs: killed before it was
    # saved, the job starts fresh and replays both rounds (the saved round-2 c_i unused either way).
    assert resumed.has_event("job_resumed", round=1) or resumed.has_event(
        "no_checkpoint_starting_fresh"
    )
    assert_same(expected, torch.load(out / "model.pt", weights_only=True))
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]


@pytest.mark.timeout(TIMEOUT)
# FedNova by hand: tests/server/test_scaffold_fednova.py; daemons = fl-sim: SCAFFOLD above.
@pytest.mark.slow
def test_fednova_over_real_daemons_equals_fl_sim(daemons: Daemons, tmp_path: Path) -> None:
    expected = simulated("fednova", tmp_path / "sim")
    port = free_port()
    out = tmp_path / "net"
    server = daemons.server(JOB, port - JOB, *common("fednova"), "--out", str(out))
    clients = start_clients(daemons, server, port)
    assert server.wait(timeout=120) == 0, server.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()
    assert_same(expected, torch.load(out / "model.pt", weights_only=True))
    rows = read_metrics(out)
    steps = [c["local_steps"] for c in rows[1]["clients"]]
    assert len(set(steps)) == CLIENTS  # unequal steps: FedNova's normalization is at work
