"""kill -9 the server at any instant of a job; `--resume` ends it exactly as if nothing happened.

Each case kills the server from inside at the moment it logs one event (``kill_at.py``), restarts
it with ``--resume``, and checks exit 0, the clients' exit 0, and a final model and metrics rows
bitwise equal to an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.conftest import Daemon, Daemons, free_port, read_metrics, wait_for

JOB = 7
ROUNDS = 2
FLAGS = (
    "--task",
    "tests.integration.user_task:TinyTask",
    "--rounds",
    str(ROUNDS),
    "--min-clients",
    "2",
    "--seed",
    "11",
    "--local-epochs",
    "5",
    "--learning-rate",
    "0.05",
    "--log-level",
    "debug",
)
# (case, event, fields): the instant of the job each case kills the server at.
KILL_POINTS = [
    ("waiting_for_clients", "client_ready", {"client": "org-a"}),
    ("download", "download_started", {"round": "2", "client": "org-b"}),
    ("training", "download_done", {"round": "2", "client": "org-a"}),
    ("upload", "upload_started", {"round": "2", "client": "org-b"}),
    ("fold", "update_folding", {"round": "2"}),
    ("strategy_step", "round_aggregating", {"round": "2"}),
    ("checkpoint_write", "checkpoint_writing", {"round": "1"}),
    ("after_last_round", "round_done", {"round": str(ROUNDS)}),
    ("final_evaluation", "final_evaluation_started", {}),
    ("after_finish", "job_finished", {}),
]


def run_clients(daemons: Daemons, server: Daemon, port: int) -> list[Daemon]:
    """Start org-a, then org-b once org-a has its id, so ids are the same in every run."""
    first = daemons.client(port, "org-a")
    wait_for(
        lambda: (
            server.has_event("client_joined", client="org-a") or server.process.poll() is not None
        ),
        60,
        "org-a to join",
    )
    return [first, daemons.client(port, "org-b")]


def start_server(
    daemons: Daemons, port: int, *args: str, name: str, prefix: tuple[str, ...] = ()
) -> Daemon:
    """Start fl-server for this job on ``port`` (not waiting for it to listen: it may not)."""
    return daemons.start(
        "fl-server",
        "--job-id",
        str(JOB),
        "--port-base",
        str(port - JOB),
        "--host",
        "127.0.0.1",
        *FLAGS,
        *args,
        name=name,
        prefix=prefix,
    )


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["round"], r.get("participants"), r.get("train_loss"), r.get("eval_loss")) for r in rows
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run every interrupted one must equal."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    pool = Daemons(workdir)
    try:
        port = free_port()
        out = workdir / "run"
        server = pool.server(JOB, port - JOB, *FLAGS, "--out", str(out))
        clients = run_clients(pool, server, port)
        assert server.wait(timeout=120) == 0, server.tail()
        for client in clients:
            assert client.wait(timeout=30) == 0, client.tail()
    finally:
        pool.stop_all()
    return out


@pytest.mark.parametrize(("case", "event", "fields"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_a_server_killed_at_any_instant_resumes_to_the_same_model(
    daemons: Daemons,
    tmp_path: Path,
    uninterrupted: Path,
    case: str,
    event: str,
    fields: dict[str, str],
) -> None:
    port = free_port()
    out = tmp_path / "run"
    marker = tmp_path / "killed.json"
    pairs = [f"{key}={value}" for key, value in fields.items()]
    kill_at = [sys.executable, "-m", "tests.integration.kill_at", str(marker), event, *pairs]
    killed = start_server(daemons, port, "--out", str(out), name="killed", prefix=(*kill_at, "--"))
    wait_for(
        lambda: killed.has_event("server_listening") or killed.process.poll() is not None,
        60,
        "the server to listen",
    )
    clients = run_clients(daemons, killed, port)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.tail()
    assert json.loads(marker.read_text())["event"] == event

    resumed = start_server(daemons, port, "--resume", "--out", str(out), name="resumed")
    assert resumed.wait(timeout=120) == 0, resumed.tail()
    for client in clients:
        assert client.wait(timeout=60) == 0, client.tail()

    expected = torch.load(uninterrupted / "model.pt", weights_only=True)
    actual = torch.load(out / "model.pt", weights_only=True)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert comparable(read_metrics(out)) == comparable(read_metrics(uninterrupted))
    if case == "after_finish":
        assert resumed.has_event("job_already_finished", rounds=ROUNDS)
        assert "is finished" in resumed.stderr.read_text()


def test_resume_of_a_finished_job_says_so_and_trains_nothing(
    daemons: Daemons, uninterrupted: Path, tmp_path: Path
) -> None:
    before = (uninterrupted / "metrics.jsonl").read_text()
    port = free_port()
    again = start_server(daemons, port, "--resume", "--out", str(uninterrupted), name="again")
    assert again.wait(timeout=60) == 0, again.tail()
    assert f"job {JOB} is finished" in again.stderr.read_text()
    assert not again.has_event("round_started")
    assert (uninterrupted / "metrics.jsonl").read_text() == before
