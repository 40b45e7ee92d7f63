"""Jobs on one host: port = port_base + job_id, side by side, and a taken port refused clearly."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.conftest import Daemons, free_port, read_metrics


def free_base_for_jobs_1_and_2() -> int:
    """Return a port base whose ports for job 1 and job 2 are both free."""
    for _ in range(50):
        base = free_port() - 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 2))
            except OSError:
                continue
        return base
    raise AssertionError("no two adjacent free ports found")


def test_two_jobs_with_different_ids_run_side_by_side(daemons: Daemons, tmp_path: Path) -> None:
    base = free_base_for_jobs_1_and_2()
    servers = {
        job: daemons.server(
            job,
            base,
            "--rounds",
            "2",
            "--min-clients",
            "1",
            "--out",
            str(tmp_path / f"job-{job}"),
            name=f"server-{job}",
        )
        for job in (1, 2)
    }
    clients = [daemons.client(base + job, f"org-{job}") for job in (1, 2)]
    for job, server in servers.items():
        assert server.wait(timeout=90) == 0, server.tail()
        assert [row["round"] for row in read_metrics(tmp_path / f"job-{job}")] == [0, 1, 2]
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()


def test_the_same_job_id_twice_is_refused_naming_port_and_job(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    job = 9
    run_dir = tmp_path / "run"
    first = daemons.server(job, port - job, "--out", str(run_dir))
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')  # stands for the first job's work
    second = daemons.start(
        "fl-server",
        "--job-id",
        str(job),
        "--port-base",
        str(port - job),
        "--host",
        "127.0.0.1",
        "--out",
        str(run_dir),
        name="second",
    )
    assert second.wait(timeout=60) == 2
    message = second.stderr.read_text().strip()
    assert len(message.splitlines()) == 1, message
    assert f"port {port}" in message and f"job_id {job}" in message
    assert "Traceback" not in message
    assert first.process.poll() is None  # the first job is untouched
    assert (run_dir / "metrics.jsonl").read_text() == '{"round": 0}\n'  # nothing lost
