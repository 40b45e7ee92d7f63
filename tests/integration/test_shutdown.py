"""SIGTERM on either daemon: the server tells clients to come back later and exits 0; clients
reconnect to the restarted server by themselves; a client leaves cleanly with exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for

JOB = 2


def test_sigterm_stops_the_server_and_its_clients_rejoin_the_restarted_job(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    run = ("--min-clients", "2", "--rounds", "2", "--out", str(tmp_path / "run"))
    server = daemons.server(JOB, port - JOB, *run)
    early = daemons.client(port, "early-org")
    wait_for(lambda: server.has_event("client_ready"), 60, "the client to be ready")

    server.process.send_signal(signal.SIGTERM)

    assert server.wait(timeout=30) == 0, server.tail()
    assert server.has_event("job_aborted", reason="server stopped by SIGTERM")
    wait_for(lambda: early.has_event("connection_lost"), 30, "the client to notice")
    assert early.process.poll() is None  # still trying to come back

    restarted = daemons.server(JOB, port - JOB, *run, "--resume", name="restarted")
    late = daemons.client(port, "late-org")
    assert restarted.wait(timeout=90) == 0, restarted.tail()
    assert early.wait(timeout=30) == 0, early.tail()
    assert late.wait(timeout=30) == 0, late.tail()
    rows = read_metrics(tmp_path / "run")
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert sorted(rows[1]["participants"]) == [0, 1]


def test_sigterm_on_a_client_makes_it_leave_with_exit_0(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    server = daemons.server(JOB, port - JOB, "--min-clients", "2", "--out", str(tmp_path / "r"))
    client = daemons.client(port, "leaving-org")
    wait_for(lambda: server.has_event("client_ready"), 60, "the client to be ready")

    client.process.send_signal(signal.SIGTERM)

    assert client.wait(timeout=30) == 0, client.tail()
    assert client.has_event("client_stopped", reason="stopped by SIGTERM")
    wait_for(lambda: server.has_event("client_left"), 30, "the server to see it go")


def test_a_job_that_too_few_clients_join_ends_at_the_join_deadline(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB, port - JOB, "--min-clients", "2", "--join-timeout", "1", "--out", str(tmp_path / "r")
    )
    daemons.client(port, "lonely-org")
    assert server.wait(timeout=60) == 1
    last_line = server.stderr.read_text().strip().splitlines()[-1]
    assert last_line.startswith(f"fl-server: job {JOB} aborted: only")
    assert "min_clients=2" in last_line and "join_timeout=1s" in last_line
