"""Record-level DP-SGD in each silo, against the real fl-server: real processes, real gRPC.

The epsilon a client reports is checked against dp-accounting's RDP accountant (Google's,
independent of Opacus), for the sampling rate and steps counted from the client's data.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import dp_accounting
import grpc
import pytest
from dp_accounting import rdp

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for
from tests.integration.raw_session import RawSession

JOB_ID = 6
DELTA = 1e-5
BATCH = 16  # the server's --batch-size in these tests
SAMPLES = 80  # the synthetic task's max_samples: a few steps per round


def server_task(tmp_path: Path) -> list[str]:
    """The server's flags: a small synthetic task (the clients get it as their own policy)."""
    config = tmp_path / "job.toml"
    config.write_text(
        f'task = "synthetic"\nbatch_size = {BATCH}\nmin_clients = 1\n'
        f"[task_options]\nmax_samples = {SAMPLES}\n"
    )
    return ["--config", str(config)]


def audit(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


def opacus_steps(examples: int) -> int:
    """Steps per epoch of Opacus' Poisson loader: int(1 / sample_rate), rate 1/ceil(N/B)."""
    return int(1 / (1 / math.ceil(examples / BATCH)))


def independent_epsilon(noise: float, examples: int, rounds: int) -> float:
    """Epsilon of ``rounds`` one-epoch rounds of DP-SGD on ``examples`` records (dp-accounting)."""
    steps = opacus_steps(examples)
    event = dp_accounting.PoissonSampledDpEvent(1 / steps, dp_accounting.GaussianDpEvent(noise))
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds * steps))
    return float(accountant.get_epsilon(DELTA))


def test_the_epsilon_a_client_reports_agrees_with_dp_accounting(
    daemons: Daemons, tmp_path: Path
) -> None:
    port, run = free_port(), tmp_path / "run"
    server = daemons.server(
        JOB_ID, port - JOB_ID, *server_task(tmp_path), "--rounds", "3", "--out", str(run)
    )
    org = tmp_path / "org-a"
    client = daemons.client(port, "org-a", "--out", str(org), "--record-dp-epsilon", "4")
    assert client.wait(timeout=120) == 0, client.tail()
    assert server.wait(timeout=30) == 0, server.tail()
    rows = audit(org)
    joined = rows[0]
    assert joined["event"] == "joined" and joined["record_dp"]["epsilon"] == 0
    noise = joined["record_dp"]["noise_multiplier"]  # derived by Opacus for 3 planned rounds
    updates = [row for row in rows if row["event"] == "update_sent"]
    assert [row["round"] for row in updates] == [1, 2, 3]
    examples = joined["train_examples"]
    for number, row in enumerate(updates, start=1):
        expected = independent_epsilon(noise, examples, number)
        assert row["record_dp"]["epsilon"] == pytest.approx(expected, rel=0.01)
    assert 3.9 <= updates[-1]["record_dp"]["epsilon"] <= 4.0  # the budget is spent, not passed
    # the server's metrics.jsonl shows each round's epsilon for this client, as it reported it
    reported = [row["clients"][0]["dp_epsilon"] for row in read_metrics(run)[1:]]
    assert reported == [row["record_dp"]["epsilon"] for row in updates]
    assert server.has_event("client_ready", record_dp_epsilon=4.0)


def test_a_client_leaves_before_the_round_that_would_pass_its_budget(
    daemons: Daemons, tmp_path: Path
) -> None:
    port, run = free_port(), tmp_path / "run"
    noise = 1.0
    examples = (
        SyntheticTask(max_samples=SAMPLES).load_data(0, 0, None).train_examples
    )  # client 0 joins first
    # a budget between what 2 and 3 rounds spend: the client trains 2 rounds, then leaves
    two, three = (independent_epsilon(noise, examples, rounds) for rounds in (2, 3))
    budget = (two + three) / 2
    server = daemons.server(
        JOB_ID,
        port - JOB_ID,
        *server_task(tmp_path),
        "--rounds",
        "4",
        "--start-clients",
        "2",  # both clients train rounds 1 and 2; min_clients 1 lets the job go on without one
        "--out",
        str(run),
    )
    org = tmp_path / "org-dp"
    dp_client = daemons.client(
        port,
        "org-dp",
        "--out",
        str(org),
        "--record-dp-noise",
        str(noise),
        "--record-dp-epsilon",
        repr(budget),
    )
    wait_for(lambda: server.has_event("client_ready"), 60, "the DP client to be ready")
    plain = daemons.client(port, "org-plain")
    assert dp_client.wait(timeout=120) == 0, dp_client.tail()
    assert plain.wait(timeout=120) == 0, plain.tail()
    assert server.wait(timeout=30) == 0, server.tail()
    rows = audit(org)
    assert [row["round"] for row in rows if row["event"] == "update_sent"] == [1, 2]
    assert rows[-1]["event"] == "refused" and rows[-1]["code"] == "PRIVACY_BUDGET_SPENT"
    assert rows[-1]["reason"].startswith("leaving the job before round 3:")
    spent = [row for row in rows if row["event"] == "update_sent"][-1]["record_dp"]["epsilon"]
    assert spent == pytest.approx(two, rel=0.01) and spent <= budget
    assert not [row for row in rows if row["event"] == "model_received" and row["round"] == 3]
    assert dp_client.has_event("left_job")
    # the server recorded why, dropped the client at once and finished the job without it
    assert server.has_event("client_reported_error", code="PRIVACY_BUDGET_SPENT", dropped=True)
    metrics = read_metrics(run)
    (drop,) = metrics[3]["dropped"]
    assert drop["reason"].startswith("privacy budget spent: leaving the job before round 3:")
    assert drop["after_seconds"] < 10
    assert len(metrics) == 5 and all(len(row["participants"]) == 1 for row in metrics[3:])


def test_a_job_that_requires_dp_refuses_a_client_without_it(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB_ID,
        port - JOB_ID,
        *server_task(tmp_path),
        "--rounds",
        "1",
        "--require-dp",
        "--out",
        str(tmp_path / "run"),
    )
    plain = daemons.client(port, "org-plain")
    assert plain.wait(timeout=60) == 2, plain.tail()
    line = plain.stderr.read_text().strip().splitlines()[-1]
    assert line == (
        "fl-client: error: refused the server's job: the job requires record-level DP-SGD "
        "(--require-dp) and this client's policy sets none (record_dp_epsilon or record_dp_noise)"
    )
    assert server.has_event("client_reported_error", code="POLICY_MISMATCH")
    # a client that does not refuse on its own is refused by the server on its Ready
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = RawSession(channel)
        hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="org-raw", job_id=JOB_ID)
        raw.send(pb.ClientMessage(hello=hello))
        assert raw.recv().init_config.job.require_dp
        raw.send(pb.ClientMessage(ready=pb.Ready(train_examples=10, test_examples=2)))
        reason = raw.expect_error(pb.NOT_ADMITTED)
        raw.close()
    assert "requires record-level DP-SGD" in reason
    private = daemons.client(port, "org-dp", "--record-dp-noise", "1.0")
    assert private.wait(timeout=60) == 0, private.tail()
    assert server.wait(timeout=30) == 0, server.tail()


def test_a_restarted_client_keeps_the_budget_it_spent(daemons: Daemons, tmp_path: Path) -> None:
    # The server is killed once round 1's checkpoint is written, the client killed too; both
    # restart (the server with --resume) and the job's rounds 2 and 3 run with the new client.
    port, run, marker = free_port(), tmp_path / "run", tmp_path / "killed.json"
    flags = [*server_task(tmp_path), "--rounds", "3", "--out", str(run)]
    kill_at = [sys.executable, "-m", "tests.integration.kill_at", str(marker)]
    killed = daemons.start(
        "fl-server",
        *("--job-id", str(JOB_ID), "--port-base", str(port - JOB_ID), "--host", "127.0.0.1"),
        *flags,
        name="killed",
        prefix=(*kill_at, "checkpoint_saved", "round=1", "--"),
    )
    wait_for(lambda: killed.has_event("server_listening"), 60, "the server to listen")
    org = tmp_path / "org-a"
    client_flags = ["--out", str(org), "--record-dp-noise", "1.0"]
    first = daemons.client(port, "org-a", *client_flags)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.tail()
    first.process.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    state = json.loads((org / f"dp-budget-job{JOB_ID}.json").read_text())
    # Round 1's checkpoint is written in the background: the client may have begun round 2 (and
    # paid for it) before the kill. Whatever it paid stays paid; the resumed job retrains 2 and 3.
    spent = state["budget"]["rounds"]
    assert spent in (1, 2)
    resumed = daemons.server(JOB_ID, port - JOB_ID, *flags, "--resume", name="resumed")
    second = daemons.client(port, "org-a", *client_flags)
    assert second.wait(timeout=120) == 0, second.tail()
    assert resumed.wait(timeout=30) == 0, resumed.tail()
    rows = audit(org)
    rejoin = [row for row in rows if row["event"] == "joined"][-1]
    assert rejoin["record_dp"]["rounds"] == spent  # reloaded from the state folder, not reset
    sent = [row for row in rows if row["event"] == "update_sent"]
    # Round 2 is sent twice only if the killed client got as far as sending it.
    rounds = [row["round"] for row in sent]
    assert rounds == [1, 2, 3] or (spent == 2 and rounds == [1, 2, 2, 3]), rounds
    last = sent[-1]["record_dp"]
    assert last["rounds"] == spent + 2
    expected = independent_epsilon(1.0, rejoin["train_examples"], spent + 2)
    assert last["epsilon"] == pytest.approx(expected, rel=0.01)
    assert read_metrics(run)[-1]["clients"][0]["dp_epsilon"] == last["epsilon"]
