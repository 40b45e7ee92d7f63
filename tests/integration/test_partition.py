"""A network partition, for real: the server and each organisation in their own network
namespace; one organisation's link is cut in the middle of its upload for longer than the
progress deadline and the time the server keeps a broken upload, then healed. The round goes
on without it and it rejoins by itself. (A cut short enough to resume from:
test_resume_transfer.py.)"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemons, read_metrics, wait_for
from tests.integration.netns import Topology, namespaces, start_client, start_server

JOB = 8
PORT = 50000 + JOB  # inside the server's own namespace: nothing else listens there
CONFIG = 'task = "tests.integration.user_task:TinyTask"\n[task_options]\nballast_mb = 16\n'


@pytest.fixture
def topology(daemons: Daemons) -> Iterator[Topology]:
    """Three organisations and a server, each in its own namespace; removed afterwards."""
    with namespaces(3, daemons) as net:
        yield net


def test_an_organisation_cut_off_mid_upload_is_dropped_and_rejoins_after_healing(
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
        "1000",
        "--min-clients",
        "2",
        "--progress-timeout",
        "3",
        "--transfer-resume-seconds",
        "2",
        "--chunk-size",
        "65536",
    )
    for org in (2, 3):
        start_client(daemons, topology, org, PORT, config)
    wait_for(lambda: server.has_event("round_started", round=1), 60, "round 1")
    topology.throttle(1, "20mbit")  # org-1's 16 MiB upload now takes several seconds
    org_1 = start_client(daemons, topology, 1, PORT, config)
    wait_for(lambda: server.has_event("upload_started", client="org-1"), 120, "org-1 uploading")
    cut_round = next(
        line["round"]
        for line in server.log_lines()
        if line.get("event") == "upload_started" and line.get("client") == "org-1"
    )

    topology.cut(1)
    wait_for(lambda: server.has_event("client_cut_off", client="org-1"), 30, "the cut-off")
    wait_for(lambda: server.has_event("upload_given_up", client="org-1"), 30, "the upload lost")
    wait_for(lambda: server.has_event("round_done", round=cut_round), 60, "the round to end")
    topology.heal(1)
    topology.unthrottle(1)

    def rounds_delivered_again() -> list[int]:
        return [
            line["round"]
            for line in server.log_lines()
            if line.get("event") == "update_received"
            and line.get("client") == "org-1"
            and line.get("round", 0) > cut_round
        ]

    wait_for(lambda: bool(rounds_delivered_again()), 120, "org-1 to rejoin and deliver again")
    # Its round must end before the stop, or no metrics row would hold org-1's update.
    rejoined_round = rounds_delivered_again()[0]
    wait_for(lambda: server.has_event("round_done", round=rejoined_round), 60, "that round")
    assert org_1.has_event("connection_lost")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.tail()

    rows = {row["round"]: row for row in read_metrics(tmp_path / "run")}
    org_1_id = next(
        c["client_id"] for r in rows.values() for c in r.get("clients", []) if c["name"] == "org-1"
    )
    (dropped,) = [d for d in rows[cut_round]["dropped"] if d["client_id"] == org_1_id]
    assert dropped["phase"] == "upload"
    assert dropped["reason"] == "stalled: no progress for 3s; not resumed within 2s"
    assert org_1_id not in rows[cut_round]["participants"]
    assert any(org_1_id in row.get("participants", []) for r, row in rows.items() if r > cut_round)
