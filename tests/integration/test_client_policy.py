"""The client's policy and audit log against the real fl-server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import xxhash

from fedsilo.common.task_identity import TaskIdentity
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from tests.integration.conftest import Daemons, free_port, read_metrics

JOB_ID = 4


def test_integer_task_options_reach_a_users_task_as_integers(
    daemons: Daemons, tmp_path: Path
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        'task = "tests.integration.canary_task:IntOptionTask"\nrounds = 1\nmin_clients = 1\n'
        "[task_options]\nhidden = 32\n"  # IntOptionTask raises on 32.0, as nn.Linear would
    )
    port = free_port()
    run_dir = tmp_path / "run"
    server = daemons.server(JOB_ID, port - JOB_ID, "--config", str(config), "--out", str(run_dir))
    client = daemons.client(port, "org-int")  # given the job's task by the helper, as --config
    assert client.wait(timeout=90) == 0, client.tail()
    assert server.wait(timeout=30) == 0, server.tail()
    assert torch.load(run_dir / "model.pt", weights_only=True)["weight"].shape == (2, 32)


def test_a_client_whose_policy_differs_is_refused_and_the_job_goes_on(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB_ID, port - JOB_ID, "--rounds", "1", "--min-clients", "1", "--out", str(tmp_path / "r")
    )
    other = daemons.client(port, "org-digits", "--task", "digits")
    assert other.wait(timeout=60) == 2, other.tail()
    line = other.stderr.read_text().strip().splitlines()[-1]
    assert line == (
        "fl-client: error: refused the server's job: "
        "the server asks for task 'synthetic', this client runs 'digits'"
    )
    assert server.has_event("client_reported_error", code="POLICY_MISMATCH")
    honest = daemons.client(port, "org-synthetic")
    assert honest.wait(timeout=60) == 0, honest.tail()
    assert server.wait(timeout=30) == 0, server.tail()


def test_the_audit_log_records_what_the_client_agreed_to_and_what_left(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    server = daemons.server(
        JOB_ID, port - JOB_ID, "--rounds", "2", "--min-clients", "1", "--out", str(run_dir)
    )
    client = daemons.client(port, "org-a", "--out", str(tmp_path / "org-a"))
    assert client.wait(timeout=90) == 0, client.tail()
    assert server.wait(timeout=30) == 0, server.tail()
    rows = [
        json.loads(line) for line in (tmp_path / "org-a" / "audit.jsonl").read_text().splitlines()
    ]
    assert [row["event"] for row in rows] == [
        "joined",
        "model_received",
        "update_sent",
        "model_received",
        "update_sent",
        "model_received",
        "evaluation_sent",
        "finished",
    ]
    joined = rows[0]
    assert joined["task"]["hash"] == TaskIdentity.of("synthetic", {}).hash
    assert joined["training"] == {
        "local_epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.1,
        "proximal_mu": 0.0,
        "optimizer": "sgd",
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    }
    # Round 1 brings the initial model: the xxh3-64 of SyntheticTask's seed-0 weights.
    initial = SyntheticTask().build_model(0).state_dict()
    raw = b"".join(
        t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for t in initial.values()
    )
    assert rows[1]["checksum"] == f"{xxhash.xxh3_64_intdigest(raw):016x}"
    assert rows[1]["bytes"] == len(raw)
    metrics = {row["round"]: row for row in read_metrics(run_dir)}
    for sent in (rows[2], rows[4]):
        (server_view,) = metrics[sent["round"]]["clients"]
        assert sent["train_examples"] == server_view["train_examples"]
        assert sent["metrics"]["train_loss"] == server_view["train_loss"]
        assert math.isfinite(sent["update_norm"]) and sent["update_norm"] > 0


def test_a_member_loading_its_data_longer_than_the_progress_deadline_is_not_dropped(
    daemons: Daemons, tmp_path: Path
) -> None:
    # The client heartbeats while it loads: the server's watch sees progress and keeps it.
    config = tmp_path / "job.toml"
    config.write_text(
        'task = "tests.integration.canary_task:SlowLoadingTask"\nrounds = 1\nmin_clients = 1\n'
        "progress_timeout = 1.0\n[task_options]\nload_seconds = 3.0\n"
    )
    port = free_port()
    server = daemons.server(JOB_ID, port - JOB_ID, "--config", str(config), "--out", str(tmp_path))
    client = daemons.client(port, "org-slow")
    assert client.wait(timeout=90) == 0, client.tail()
    assert server.wait(timeout=30) == 0, server.tail()
    assert not server.has_event("client_cut_off")
