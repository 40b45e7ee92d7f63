"""kill -9 the server mid-job, restart it with --resume: the clients come back by themselves and
the final model is bitwise equal to the one of an uninterrupted run of the same config."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for

JOB = 6
ROUNDS = 4
FLAGS = (
    "--task",
    "tests.integration.user_task:TinyTask",
    "--rounds",
    str(ROUNDS),
    "--min-clients",
    "2",
    "--seed",
    "5",
    "--local-epochs",
    "150",
    "--learning-rate",
    "0.05",
)


def start_clients(daemons: Daemons, server_log, port: int) -> list:
    """Start org-a, then org-b once org-a has its id, so ids are the same in every run."""
    first = daemons.client(port, "org-a")
    wait_for(lambda: server_log.has_event("client_joined", client="org-a"), 60, "org-a")
    return [first, daemons.client(port, "org-b")]


# In `make test-slow`: test_kill_anywhere.py kills the server at every instant of a job (mid-round
# with updates in flight included) in `make test`; this one kills it from outside, mid-training.
@pytest.mark.slow
def test_a_killed_and_resumed_job_ends_bitwise_equal_to_an_uninterrupted_one(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    straight = daemons.server(JOB, port - JOB, *FLAGS, "--out", str(straight_dir), name="s1")
    clients = start_clients(daemons, straight, port)
    assert straight.wait(timeout=120) == 0, straight.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()

    first = daemons.server(JOB, port - JOB, *FLAGS, "--out", str(resumed_dir), name="s2")
    clients = start_clients(daemons, first, port)
    wait_for(lambda: first.has_event("round_started", round=2), 60, "round 2 to start")
    wait_for(lambda: first.has_event("checkpoint_saved", round=1), 60, "round 1's checkpoint")
    first.process.send_signal(signal.SIGKILL)  # mid-round: round 2's updates are in flight
    first.process.wait(timeout=10)
    wait_for(lambda: all(c.has_event("connection_lost") for c in clients), 30, "clients to see")

    second = daemons.server(
        JOB, port - JOB, *FLAGS, "--resume", "--out", str(resumed_dir), name="s3"
    )
    assert second.wait(timeout=120) == 0, second.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()
    assert second.has_event("job_resumed", round=1)

    expected = torch.load(straight_dir / "model.pt", weights_only=True)
    resumed = torch.load(resumed_dir / "model.pt", weights_only=True)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name

    def comparable(rows: list[dict]) -> list[tuple]:
        return [
            (r["round"], r.get("participants"), r.get("train_loss"), r.get("eval_loss"))
            for r in rows
        ]

    assert comparable(read_metrics(resumed_dir)) == comparable(read_metrics(straight_dir))
