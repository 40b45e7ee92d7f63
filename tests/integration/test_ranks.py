"""``fl-client --nproc-per-node 2``: real ranks (gloo, CPU) started by torch's elastic agent."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from fedsilo.common.seeding import derive_seed
from fedsilo.tasks import TrainConfig
from tests.integration.conftest import (
    Daemon,
    Daemons,
    free_port,
    read_metrics,
    toml_value,
    wait_for,
)
from tests.integration.rank_task import RankTask
from tests.integration.test_faults import ScriptedFaultyClient

JOB = 7
SEED = 5
FEATURES = 300  # 602 float32 = 2408 bytes: streamed in chunks of 1024 (the scripted client's need)
# 80 examples in batches of 15: 5 full batches (8 + 7 examples per rank) and one of 5 (3 + 2).
EPOCHS, BATCH, LR = 2, 15, 0.1
TRAIN_FLAGS = ("--local-epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR))


def job_config(tmp_path: Path, **options: object) -> Path:
    """Write the job's task (RankTask with ``options``) as a TOML config file."""
    lines = ['task = "tests.integration.rank_task:RankTask"', "[task_options]"]
    lines += [
        f"{key} = {toml_value(value)}" for key, value in {"features": FEATURES, **options}.items()
    ]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def single_process_update(global_state: dict, client_id: int, round_number: int) -> dict:
    """What one process training the whole batches would send: the reference."""
    task = RankTask(features=FEATURES)
    model = task.build_model(SEED)
    model.load_state_dict(global_state)
    config = TrainConfig(
        local_epochs=EPOCHS,
        batch_size=BATCH,
        learning_rate=LR,
        seed=derive_seed(SEED, "train", round_number, client_id),
    )
    task.train(model, task.load_data(client_id, SEED, None), config)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_rank_silos_on_one_host_finish_a_job_with_the_single_process_updates(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    port = free_port()
    server = daemons.server(
        JOB,
        port - JOB,
        "--config",
        str(job_config(tmp_path)),
        "--rounds",
        "1",
        "--min-clients",
        "2",
        "--seed",
        str(SEED),
        *TRAIN_FLAGS,
        "--out",
        str(run),
    )
    silos = [daemons.client(port, name, "--nproc-per-node", "2") for name in ("silo-a", "silo-b")]
    assert server.wait(timeout=240) == 0, server.tail()
    for silo in silos:
        assert silo.wait(timeout=30) == 0, silo.tail()
    # Both launched their ranks in the same round, at the same time, each on its own store.
    started, done = (
        [next(line for line in silo.log_lines() if line.get("event") == event) for silo in silos]
        for event in ("ranks_started", "ranks_done")
    )
    assert started[0]["rendezvous"] != started[1]["rendezvous"]
    assert started[0]["timestamp"] < done[1]["timestamp"]  # the two launches overlapped
    assert started[1]["timestamp"] < done[0]["timestamp"]
    (row,) = [r for r in read_metrics(run) if r["round"] == 1]
    assert [c["train_examples"] for c in row["clients"]] == [80, 80]
    initial = RankTask(features=FEATURES).build_model(SEED).state_dict()
    updates = [single_process_update(initial, c["client_id"], 1) for c in row["clients"]]
    final = torch.load(run / "model.pt", weights_only=True)
    assert not torch.allclose(final["weight"], initial["weight"], atol=1e-3)  # it trained
    # FedAvg of equal weights; sums of shares instead of one mean per batch: equal up to
    # float32 rounding.
    for name in initial:
        expected = (updates[0][name] + updates[1][name]) / 2
        torch.testing.assert_close(final[name], expected, rtol=1e-5, atol=1e-6)


def test_a_rank_killed_mid_training_drops_the_silo_from_that_round_and_it_rejoins_the_next(
    daemons: Daemons, tmp_path: Path
) -> None:
    run, marker = tmp_path / "run", tmp_path / "rank-1-killed"
    port = free_port()
    server = daemons.server(
        JOB,
        port - JOB,
        "--config",
        str(job_config(tmp_path, kill_rank=1, marker=str(marker))),
        "--rounds",
        "2",
        "--min-clients",
        "1",
        "--start-clients",
        "2",
        "--seed",
        str(SEED),
        "--chunk-size",
        "1024",
        "--round-timeout",
        "200",
        *TRAIN_FLAGS,
        "--out",
        str(run),
    )
    # A scripted member holds round 1 open until the silo is back, so that round 2 finds it
    # ready (the coordinator starts a round as soon as min_clients are).
    holder = ScriptedFaultyClient(tmp_path, port, "training", fault_round=0)
    try:
        wait_for(lambda: holder.said("ready"), 60, "the scripted member to be ready")
        silo = daemons.client(port, "silo", "--nproc-per-node", "2")
        wait_for(lambda: silo.has_event("left_round", round=1), 120, "the silo to leave round 1")
        assert children(silo.process.pid) == []  # rank 0, stuck in its all-reduce, was stopped
        wait_for(lambda: ready_count(server, "silo") == 2, 60, "the silo to join again")
        holder.release_round_1()
        assert server.wait(timeout=180) == 0, server.tail()
        assert silo.wait(timeout=30) == 0, silo.tail()
    finally:
        holder.kill()
    assert marker.exists()
    (left,) = [line for line in silo.log_lines() if line.get("event") == "left_round"]
    assert "rank 1 of 2" in left["reason"] and "SIGKILL" in left["reason"], left
    rows = {row["round"]: row for row in read_metrics(run)}
    silo_id = 1  # the scripted member joined first
    assert rows[1]["selected"] == [0, silo_id]
    assert rows[1]["participants"] == [0]
    (dropped,) = rows[1]["dropped"]
    assert dropped["client_id"] == silo_id and dropped["reason"] == "disconnected"
    assert rows[2]["participants"] == [0, silo_id]
    assert silo.has_event("ranks_done", nproc=2, round=2), silo.tail()


def test_sigterm_while_the_ranks_train_stops_them_and_the_client_exits_0(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    daemons.server(JOB, port - JOB, "--config", str(job_config(tmp_path)), "--min-clients", "1")
    silo = daemons.client(port, "silo", "--nproc-per-node", "2")
    wait_for(lambda: len(children(silo.process.pid)) == 2, 120, "the ranks to start")
    ranks = children(silo.process.pid)
    silo.process.send_signal(signal.SIGTERM)
    assert silo.wait(timeout=30) == 0, silo.tail()
    assert silo.has_event("client_stopped", reason="stopped by SIGTERM"), silo.tail()
    # The agent stops them (SIGTERM); one it had not yet taken charge of dies with the client
    # (PR_SET_PDEATHSIG, or its own check of its parent once torch is imported).
    wait_for(lambda: not any(running(pid) for pid in ranks), 20, "the ranks to end")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux: every thread's ``children`` file)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def ready_count(server: Daemon, name: str) -> int:
    """How many times the server saw ``name`` become ready (once per session)."""
    lines = server.log_lines()
    return sum(
        1 for line in lines if line.get("event") == "client_ready" and line.get("client") == name
    )
