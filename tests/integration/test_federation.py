"""A whole federation as real processes: 1 fl-server + 3 fl-client over gRPC on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsilo.common.seeding import derive_seed
from fedsilo.tasks import TrainConfig, load_task
from tests.integration.conftest import Daemons, free_port, read_metrics

JOB_ID = 3
ROUNDS = 3
SEED = 11
CLIENTS = ("hospital-a", "hospital-b", "lab-c")
TRAIN_FLAGS = ("--local-epochs", "2", "--batch-size", "16", "--learning-rate", "0.05")


def fedavg_float64(updates: list[dict], weights: list[float]) -> dict[str, torch.Tensor]:
    """The example-weighted mean, computed plainly in float64."""
    total = sum(weights)
    return {
        name: (
            sum(w * u[name].double() for u, w in zip(updates, weights, strict=True)) / total
        ).float()
        for name in updates[0]
    }


def median_plain(updates: list[dict], weights: list[float]) -> dict[str, torch.Tensor]:
    """The coordinate-wise median of three updates: the middle value, unweighted."""
    return {
        name: torch.stack([u[name] for u in updates]).median(dim=0).values for name in updates[0]
    }


def reference_run(rows: list[dict], rounds: int, aggregate=fedavg_float64) -> dict:
    """Recompute every client's update in-process and aggregate them with plain math."""
    task = load_task("synthetic")
    global_state = {k: v.clone() for k, v in task.build_model(SEED).state_dict().items()}
    for number in range(1, rounds + 1):
        row = next(r for r in rows if r["round"] == number)
        updates, weights = [], []
        for client in row["clients"]:
            cid = client["client_id"]
            model = task.build_model(SEED)
            model.load_state_dict(global_state)
            data = task.load_data(cid, SEED, None)  # partition defaults to the client id
            result = task.train(
                model,
                data,
                TrainConfig(
                    local_epochs=2,
                    batch_size=16,
                    learning_rate=0.05,
                    seed=derive_seed(SEED, "train", number, cid),
                ),
            )
            assert result.examples == client["train_examples"]
            updates.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(float(result.examples))
        global_state = aggregate(updates, weights)
    return global_state


def test_three_clients_three_rounds_end_with_the_fedavg_of_their_updates(
    daemons: Daemons, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    daemons.federation(
        JOB_ID,
        CLIENTS,
        "--rounds",
        str(ROUNDS),
        "--min-clients",
        "3",
        "--seed",
        str(SEED),
        "--out",
        str(run_dir),
        "--round-timeout",
        "60",
        *TRAIN_FLAGS,
    )

    rows = read_metrics(run_dir)
    assert [row["round"] for row in rows] == list(range(ROUNDS + 1))
    for row in rows[1:]:
        assert sorted(row["participants"]) == [0, 1, 2]
        assert row["dropped"] == []
        assert row["bytes_down"] > 0 and row["bytes_up"] > 0
        assert {c["name"] for c in row["clients"]} == set(CLIENTS)
    assert all(row["eval_examples"] > 0 for row in rows)
    assert rows[-1]["eval_accuracy"] > rows[0]["eval_accuracy"]

    final = torch.load(run_dir / "model.pt", weights_only=True)
    expected = reference_run(rows, ROUNDS)
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


def test_every_log_line_is_json_with_the_job_and_client_bound(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB_ID, port - JOB_ID, "--rounds", "1", "--min-clients", "1", "--out", str(tmp_path / "r")
    )
    client = daemons.client(port, "solo")
    assert server.wait(timeout=60) == 0, server.tail()
    assert client.wait(timeout=30) == 0, client.tail()

    server_lines = server.log_lines()
    assert server_lines and all("event" in line for line in server_lines), server.tail()
    assert all(line["job_id"] == JOB_ID for line in server_lines)
    per_client = [
        line for line in server_lines if line["event"] in ("client_ready", "update_received")
    ]
    assert per_client and all(line["client_id"] == 0 for line in per_client)
    assert all(line["round"] == 1 for line in server_lines if line["event"] == "update_received")

    client_lines = client.log_lines()
    assert all("event" in line for line in client_lines), client.tail()
    sent = [line for line in client_lines if line["event"] == "update_sent"]
    assert sent and all(
        (line["job_id"], line["client_id"], line["round"]) == (JOB_ID, 0, 1) for line in sent
    )


def test_a_users_own_task_with_options_from_a_config_file(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    config = tmp_path / "job.toml"
    config.write_text(
        'task = "tests.integration.user_task:TinyTask"\n'
        "rounds = 2\nmin_clients = 2\nlearning_rate = 0.5\n"
        "[task_options]\nfeatures = 7\n"
    )
    server = daemons.server(JOB_ID, port - JOB_ID, "--config", str(config), "--out", str(run_dir))
    clients = [daemons.client(port, name) for name in ("org-1", "org-2")]
    assert server.wait(timeout=90) == 0, server.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()
    final = torch.load(run_dir / "model.pt", weights_only=True)
    assert final["weight"].shape == (2, 7)
    rows = read_metrics(run_dir)
    assert rows[-1]["eval_accuracy"] > 0.8


def test_an_unloadable_task_is_a_config_error(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    server = daemons.start(
        "fl-server",
        "--job-id",
        "1",
        "--port-base",
        str(port - 1),
        "--host",
        "127.0.0.1",
        "--task",
        "no_such_module:Task",
        "--out",
        str(tmp_path / "run"),
        name="server",
    )
    assert server.wait(timeout=60) == 2
    message = server.stderr.read_text().strip()
    assert "no_such_module" in message and len(message.splitlines()) == 1


@pytest.mark.slow  # the median itself: tests/server/test_byzantine.py
def test_the_median_strategy_over_real_processes_gives_the_coordinate_median(
    daemons: Daemons, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    daemons.federation(
        JOB_ID,
        CLIENTS,
        "--rounds",
        "2",
        "--min-clients",
        "3",
        "--seed",
        str(SEED),
        "--strategy",
        "median",
        "--out",
        str(run_dir),
        *TRAIN_FLAGS,
    )
    final = torch.load(run_dir / "model.pt", weights_only=True)
    expected = reference_run(read_metrics(run_dir), 2, aggregate=median_plain)
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


def test_compressed_updates_cross_real_daemons_and_the_model_still_learns(
    daemons: Daemons, tmp_path: Path
) -> None:
    run_dir = tmp_path / "int8"
    daemons.federation(
        JOB_ID,
        CLIENTS,
        *("--rounds", "3", "--min-clients", "3", "--seed", str(SEED), *TRAIN_FLAGS),
        *("--compression", "int8", "--out", str(run_dir)),
    )
    rows = read_metrics(run_dir)
    assert rows[-1]["eval_accuracy"] > rows[0]["eval_accuracy"]
    for row in rows[1:]:
        assert row["dropped"] == [] and sorted(row["participants"]) == [0, 1, 2]
        # The model goes down whole (float32); updates come up as int8 deltas and scales.
        assert row["bytes_up"] < row["bytes_down"] / 2
