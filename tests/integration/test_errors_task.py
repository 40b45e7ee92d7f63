"""A member whose own task fails tells the server (TASK_FAILED) and prints one line; the server
records why and goes on with the others at once. A wrong --data is refused before connecting.

Real fl-server and fl-client processes; the task is ``tests/integration/failing_task.py``, run
by every member with the same options, each failing (or not) as its own --data folder says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Daemon, Daemons, free_port, read_metrics

TASK = "tests.integration.failing_task:DataTask"
JOB = 4


def data_folder(root: Path, name: str, fail: str | None) -> Path:
    """A member's --data folder; ``fail`` names the step its task breaks in."""
    folder = root / name
    folder.mkdir()
    if fail is not None:
        (folder / "fail").write_text(fail)
    return folder


def error_line(client: Daemon) -> str:
    """The client's last stderr line, checking that every other one is a JSON log line."""
    lines = client.stderr.read_text().splitlines()
    assert lines, f"{client.name} wrote nothing"
    for line in lines[:-1]:
        json.loads(line)  # no raw traceback: only log lines before the final one
    return lines[-1]


def reported(server: Daemon, client: str) -> list[dict[str, Any]]:
    """The server's client_reported_error lines for one client name."""
    return [
        line
        for line in server.log_lines()
        if line.get("event") == "client_reported_error" and line.get("client") == client
    ]


def test_members_whose_task_fails_are_dropped_at_once_with_their_reason(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    run = tmp_path / "run"
    started = time.monotonic()
    # Timeouts far above the run's length: the job ends early only if failures end work at once.
    server = daemons.server(
        JOB,
        port - JOB,
        "--task",
        TASK,
        "--rounds",
        "1",
        "--min-clients",
        "1",
        "--start-clients",
        "3",
        "--round-timeout",
        "300",
        "--progress-timeout",
        "120",
        "--out",
        str(run),
    )
    healthy = daemons.client(port, "healthy", "--data", str(data_folder(tmp_path, "ok", None)))
    load = daemons.client(port, "load-bad", "--data", str(data_folder(tmp_path, "l", "load")))
    train = daemons.client(port, "train-bad", "--data", str(data_folder(tmp_path, "t", "train")))
    evaluate = daemons.client(
        port,
        "eval-bad",
        "--data",
        str(data_folder(tmp_path, "e", "evaluate")),
        "--log-level",
        "debug",
    )

    # Loading its data fails: the server is told while it admits the member; one line, exit 3.
    assert load.wait(timeout=90) == 3, load.tail()
    line = error_line(load)
    assert line.startswith(
        "fl-client: error: the task failed while building its model and loading its data"
    )
    assert "FileNotFoundError: no such file:" in line and "rows.csv" in line

    assert server.wait(timeout=120) == 0, server.tail()
    assert time.monotonic() - started < 100  # neither timeout (300 s, 120 s) was waited out
    assert healthy.wait(timeout=30) == 0, healthy.tail()

    # Training with rows of the wrong width: torch's own shape error, in one line.
    assert train.wait(timeout=30) == 3, train.tail()
    line = error_line(train)
    assert line.startswith("fl-client: error: the task failed while training in round 1: ")
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in line
    assert "Traceback" not in train.stderr.read_text()
    audit = (tmp_path / "runs" / "client-train-bad" / "audit.jsonl").read_text().splitlines()
    failed = [json.loads(entry) for entry in audit if '"task_failed"' in entry]
    assert len(failed) == 1 and failed[0]["code"] == "TASK_FAILED"
    assert failed[0]["reason"] == line.removeprefix("fl-client: error: ")

    # The final evaluation fails; at --log-level debug the traceback is in a JSON log line.
    assert evaluate.wait(timeout=30) == 3, evaluate.tail()
    line = error_line(evaluate)
    assert line.startswith("fl-client: error: the task failed while evaluating the final model")
    assert "ValueError: labels out of range" in line
    traced = [
        entry for entry in evaluate.log_lines() if entry.get("event") == "task_failed_traceback"
    ]
    assert len(traced) == 1 and "exception" in traced[0]

    # The server's log says who reported what, in which phase.
    for name, phase in (
        ("load-bad", "joined"),
        ("train-bad", "training"),
        ("eval-bad", "evaluating"),
    ):
        lines = reported(server, name)
        assert [entry["code"] for entry in lines] == ["TASK_FAILED"], (name, lines)
        assert lines[0]["phase"] == phase, (name, lines)

    # metrics.jsonl: round 1 names the member that failed in training, and why; the final row
    # (the model of round 1, evaluated) carries the failed evaluation as that client's error.
    rows = read_metrics(run)
    assert [row["round"] for row in rows] == [0, 1]
    ids = {
        entry["client"]: entry["client_id"]
        for entry in server.log_lines()
        if entry.get("event") == "client_joined"
    }
    dropped = {entry["client_id"]: entry for entry in rows[1]["dropped"]}
    assert set(dropped) == {ids["train-bad"]}
    assert dropped[ids["train-bad"]]["phase"] == "training"
    assert dropped[ids["train-bad"]]["reason"].startswith(
        "task failed: RuntimeError: mat1 and mat2"
    )
    assert sorted(rows[1]["participants"]) == sorted([ids["healthy"], ids["eval-bad"]])
    evaluations = {entry["client_id"]: entry for entry in rows[1]["eval_clients"]}
    assert set(evaluations) == {ids["healthy"], ids["eval-bad"]}
    assert "loss" in evaluations[ids["healthy"]]
    assert evaluations[ids["eval-bad"]]["error"].startswith("task failed: ValueError: labels")


def test_a_missing_data_folder_is_refused_before_connecting(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens: the client must not get as far as dialing
    client = daemons.client(port, "lost", "--task", TASK, "--data", str(tmp_path / "nowhere"))
    assert client.wait(timeout=60) == 2
    line = error_line(client)
    assert line == f"fl-client: error: data: {tmp_path / 'nowhere'} does not exist"


def test_a_data_path_that_is_a_file_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "rows.csv").write_text("1,2,3\n")
    client = daemons.client(port, "filed", "--task", TASK, "--data", str(tmp_path / "rows.csv"))
    assert client.wait(timeout=60) == 2
    assert error_line(client) == f"fl-client: error: data: {tmp_path / 'rows.csv'} is not a folder"


def test_task_options_the_task_refuses_are_refused_before_connecting(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "client.toml"
    task = "tests.integration.canary_task:IntOptionTask"
    config.write_text(f'task = "{task}"\n[task_options]\nhidden = "four"\n')
    started = time.monotonic()
    client = daemons.client(port, "picky", "--config", str(config), "--connect-timeout", "60")
    assert client.wait(timeout=60) == 2
    assert time.monotonic() - started < 30  # it never waited for a server
    line = error_line(client)
    assert line.startswith("fl-client: error: ") and "hidden must be an int" in line
