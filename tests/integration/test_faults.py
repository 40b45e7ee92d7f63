"""Fault injection with real processes: a client killed (SIGKILL) or stalled in each phase of a
round is dropped, the round completes with the others, and the metrics say who, where, when."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Daemons, free_port, read_metrics, wait_for

JOB = 4
# A 16 MiB model in 64 KiB chunks: a transfer spans far more than the HTTP/2 flow-control
# windows, so a client that stops reading really blocks the server's writes mid-download.
CONFIG = 'task = "tests.integration.user_task:TinyTask"\n[task_options]\nballast_mb = 16\n'


class ScriptedFaultyClient:
    """tests/integration/faulty_client.py as a process: it stops at a phase of a round (2)."""

    def __init__(self, tmp_path: Path, port: int, phase: str, fault_round: int = 2) -> None:
        self.stdout_path = tmp_path / "faulty.out"
        with self.stdout_path.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.faulty_client",
                    "--server",
                    f"127.0.0.1:{port}",
                    "--name",
                    "faulty",
                    "--fault-round",
                    str(fault_round),
                    "--stop-at",
                    phase,
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def said(self, line: str) -> bool:
        return line in self.stdout_path.read_text().splitlines()

    def release_round_1(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def run_round_2_with_a_faulty_client(
    daemons: Daemons, tmp_path: Path, phase: str, kill: bool, *server_flags: str
) -> list[dict]:
    """Round 1: faulty + org-a; round 2: faulty + org-a + org-b, faulty stops at ``phase``."""
    port = free_port()
    config = tmp_path / "job.toml"
    config.write_text(CONFIG)
    server = daemons.server(
        JOB,
        port - JOB,
        "--config",
        str(config),
        "--min-clients",
        "2",
        "--rounds",
        "2",
        "--chunk-size",
        "65536",
        "--round-timeout",
        "120",
        "--log-level",
        "debug",
        "--out",
        str(tmp_path / "run"),
        *server_flags,
    )
    faulty = ScriptedFaultyClient(tmp_path, port, phase)
    try:
        wait_for(lambda: faulty.said("ready"), 60, "the faulty client to be ready")
        org_a = daemons.client(port, "org-a")
        wait_for(lambda: server.has_event("round_started", round=1), 60, "round 1")
        org_b = daemons.client(port, "org-b")
        wait_for(lambda: server.has_event("client_ready", client="org-b"), 60, "org-b ready")
        faulty.release_round_1()
        wait_for(lambda: faulty.said(f"stopped-at {phase}"), 60, f"the fault in {phase}")
        if phase == "upload":
            wait_for(
                lambda: server.has_event("upload_started", client="faulty", round=2),
                30,
                "the server to be receiving the upload",
            )
        if kill:
            faulty.kill()
        assert server.wait(timeout=120) == 0, server.tail()
        assert org_a.wait(timeout=30) == 0, org_a.tail()
        assert org_b.wait(timeout=30) == 0, org_b.tail()
    finally:
        faulty.kill()
    return read_metrics(tmp_path / "run")


# Killed in upload in `make test`; in download and training in `make test-slow` (a stalled
# client in both phases is cut off through the daemons in `make test`, below).
@pytest.mark.parametrize(
    "phase",
    [
        pytest.param("download", marks=pytest.mark.slow),
        pytest.param("training", marks=pytest.mark.slow),
        "upload",
    ],
)
def test_a_client_killed_in_any_phase_is_dropped_and_the_round_completes(
    daemons: Daemons, tmp_path: Path, phase: str
) -> None:
    # A broken up- or download is kept 1 s for its client to resume it (server/resume*.py).
    flags = ("--transfer-resume-seconds", "1")
    rows = run_round_2_with_a_faulty_client(daemons, tmp_path, phase, True, *flags)
    assert sorted(rows[1]["participants"]) == [0, 1]  # faulty (0) and org-a (1)
    assert rows[2]["selected"] == [0, 1, 2]
    assert rows[2]["participants"] == [1, 2]
    (dropped,) = rows[2]["dropped"]
    assert dropped["client_id"] == 0
    kept = "; not resumed within 1s" if phase in ("download", "upload") else ""
    assert dropped["reason"] == "disconnected" + kept
    assert dropped["phase"] == phase
    assert dropped["after_seconds"] >= 0


@pytest.mark.parametrize("phase", ["download", "training"])
def test_a_stalled_client_is_cut_off_at_the_progress_deadline(
    daemons: Daemons, tmp_path: Path, phase: str
) -> None:
    flags = ("--progress-timeout", "2", "--transfer-resume-seconds", "1")
    rows = run_round_2_with_a_faulty_client(daemons, tmp_path, phase, False, *flags)
    assert rows[2]["participants"] == [1, 2]
    (dropped,) = rows[2]["dropped"]
    assert dropped["client_id"] == 0
    # A stalled download is cut off, then kept 1 s for its client to resume it.
    kept = "; not resumed within 1s" if phase == "download" else ""
    assert dropped["reason"] == "stalled: no progress for 2s" + kept
    assert dropped["phase"] == phase
    assert dropped["after_seconds"] < 60  # long before the 120 s round deadline
