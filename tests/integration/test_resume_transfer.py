"""Transfers that survive a cut link: the server and two organisations in their own network
namespaces; org-1's link goes down half-way through its download of the 64 MiB model, and again
half-way through its 64 MiB upload, each time for a few seconds, long enough for the server to
cut its stream off, then comes back. Each time org-1 reconnects and continues from where the
transfer stood (the bytes it has of the model; the bytes the server holds of its update), and
the round ends with its update: the final model is bitwise the FedAvg of both clients' updates,
as without the cuts. One federation run for both cuts, to keep the test short."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedsilo.common.seeding import derive_seed
from fedsilo.server.strategies import fedavg
from fedsilo.tasks import TrainConfig
from tests.integration.conftest import Daemon, Daemons, read_metrics, wait_for
from tests.integration.netns import Topology, namespaces, start_client, start_server
from tests.integration.user_task import TinyTask

JOB = 12
PORT = 50000 + JOB
SEED = 5
BALLAST_MB = 64
MIB = 1 << 20
CONFIG = (
    f'task = "tests.integration.user_task:TinyTask"\n[task_options]\nballast_mb = {BALLAST_MB}\n'
)
TOTAL = BALLAST_MB * MIB  # the model's and the update's bytes, but for 168 of the layer
RATE = "100mbit"  # 64 MiB in about 5.4 s
HALF_SECONDS = 2.7
CUT_SECONDS = 2.0  # the link stays down this long after the server has cut the stream off


def throttle_server_end(topology: Topology, org: int, on: bool = True) -> None:
    """Limit what the server sends to organisation ``org`` (tc tbf on the server's end)."""
    device = f"{topology.tag}s{org}"
    tbf = ["tbf", "rate", RATE, "burst", "32kbit", "latency", "400ms"]
    command = ["tc", "qdisc", "replace" if on else "del", "dev", device, "root"]
    subprocess.run(
        [*topology.exec_prefix(topology.server_ns), *command, *(tbf if on else [])],
        check=True,
        capture_output=True,
        timeout=30,
    )


def expected_model(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Both clients' round-1 updates recomputed here, folded as the server folds: in id order."""
    task = TinyTask(ballast_mb=BALLAST_MB)
    (row,) = [r for r in rows if r["round"] == 1]
    updates, weights = [], []
    for client in sorted(row["clients"], key=lambda c: c["client_id"]):
        cid = client["client_id"]
        model = task.build_model(SEED)
        data = task.load_data(cid, SEED, None)  # partition defaults to the client id
        config = TrainConfig(
            local_epochs=1,
            batch_size=32,
            learning_rate=0.1,
            seed=derive_seed(SEED, "train", 1, cid),
        )
        result = task.train(model, data, config)
        assert result.examples == client["train_examples"]
        updates.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        weights.append(float(result.examples))
    return fedavg.aggregate(updates, weights)


def offsets(daemon: Daemon, event: str, client: str) -> list[int]:
    """The ``offset`` field of each ``event`` line about ``client``."""
    return [
        int(line["offset"])
        for line in daemon.log_lines()
        if line.get("event") == event and line.get("client") == client
    ]


@pytest.fixture
def topology(daemons: Daemons) -> Iterator[Topology]:
    """Two organisations and a server, each in its own namespace; removed afterwards."""
    with namespaces(2, daemons) as net:
        yield net


def test_a_download_and_an_upload_cut_half_way_go_on_where_they_stood_and_the_round_keeps_it(
    daemons: Daemons, topology: Topology, tmp_path: Path
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(CONFIG)
    server = start_server(
        daemons,
        topology,
        JOB,
        config,
        tmp_path / "run",
        "--rounds",
        "1",
        "--seed",
        str(SEED),
        "--min-clients",
        "2",
        "--progress-timeout",
        "4",  # heartbeats every second while training, on two cores shared by many
        "--round-timeout",
        "120",
    )
    topology.throttle(1, RATE)  # org-1's 64 MiB upload takes about 5 s
    throttle_server_end(topology, 1)  # and so does its download
    clients = [
        start_client(daemons, topology, org, PORT, config, "--log-level", "debug") for org in (1, 2)
    ]
    wait_for(lambda: server.has_event("download_started", client="org-1"), 120, "the download")
    time.sleep(HALF_SECONDS)  # about half of it: the server does not log a download's bytes
    topology.cut(1)
    wait_for(lambda: server.has_event("download_parked", client="org-1"), 30, "download parked")
    time.sleep(CUT_SECONDS)  # the outage itself: nothing to wait for, the link is down
    topology.heal(1)
    throttle_server_end(topology, 1, on=False)

    wait_for(
        lambda: any(o >= 32 * MIB for o in offsets(server, "upload_acked", "org-1")),
        120,
        "half of org-1's upload",
    )
    topology.cut(1)
    wait_for(lambda: bool(offsets(server, "upload_parked", "org-1")), 30, "the upload parked")
    time.sleep(CUT_SECONDS)  # the outage itself: nothing to wait for, the link is down
    topology.heal(1)
    topology.unthrottle(1)

    assert server.wait(timeout=120) == 0, server.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()

    (parked,) = offsets(server, "upload_parked", "org-1")
    assert parked >= TOTAL // 2
    (resumed,) = offsets(server, "upload_resumed", "org-1")
    assert resumed == parked  # exactly where the server held it: no byte taken twice
    assert clients[0].has_event("upload_resumed", offset=parked)
    assert clients[0].has_event("connection_lost")
    (downloaded,) = offsets(server, "download_resumed", "org-1")  # what org-1 said it had
    assert 0.1 * TOTAL < downloaded < 0.9 * TOTAL
    assert clients[0].has_event("download_resuming", offset=downloaded)

    rows = read_metrics(tmp_path / "run")
    (row,) = [r for r in rows if r["round"] == 1]
    assert row["dropped"] == []
    assert sorted(row["participants"]) == [0, 1]
    org_1 = next(c for c in row["clients"] if c["name"] == "org-1")
    assert TOTAL <= org_1["bytes_up"] < TOTAL + 2 * MIB  # not sent again from the start

    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    expected = expected_model(rows)
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name
