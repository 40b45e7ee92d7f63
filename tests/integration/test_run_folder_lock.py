"""One run folder, one job: a second fl-server on a folder in use exits 2 naming the folder and
its holder, whatever its port, and changes nothing; once the holder is killed (kill -9), the
folder is free and a --resume start continues the job."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
from pathlib import Path

from fedsilo.server import checkpoint_file
from fedsilo.server.checkpoint import CHECKPOINT_FILE
from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for

JOB = 5
TASK = ("--task", "tests.integration.user_task:TinyTask", "--min-clients", "2")
# The first server cannot finish before the test stops it (rounds are not part of a job's
# identity: the resumed server is given a count it can reach).
ENDLESS = ("--rounds", "100000")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256 of its bytes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in state T (stopped), so no write is in flight."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state == "T" for state in states)


def test_a_second_server_on_a_held_run_folder_exits_2_and_a_resume_after_kill_9_works(
    daemons: Daemons, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first_port, second_port = free_port(), free_port()
    first = daemons.server(
        JOB, first_port - JOB, *TASK, *ENDLESS, "--out", str(run_dir), name="first"
    )
    clients = [daemons.client(first_port, name) for name in ("org-a", "org-b")]
    wait_for(lambda: first.has_event("checkpoint_saved", round=1), 90, "round 1's checkpoint")
    # Stopped, the holder is alive (it keeps its lock) and writes nothing while we look.
    first.process.send_signal(signal.SIGSTOP)
    wait_for(lambda: all_threads_stopped(first.process.pid), 30, "the first server to stop")
    before = snapshot(run_dir)
    assert "metrics.jsonl" in before and CHECKPOINT_FILE in before

    for extra in ((), ("--resume",)):
        second = daemons.start(
            "fl-server",
            *("--job-id", str(JOB), "--port-base", str(second_port - JOB)),
            *("--host", "127.0.0.1", *TASK, *ENDLESS, "--out", str(run_dir), *extra),
            name=f"second{'-'.join(extra)}",
        )
        assert second.wait(timeout=60) == 2, second.tail()
        message = second.stderr.read_text().strip()
        assert len(message.splitlines()) == 1, message
        assert str(run_dir) in message
        assert f"pid {first.process.pid}" in message and f"port {first_port}" in message
        assert snapshot(run_dir) == before  # metrics.jsonl, checkpoint, lock file: untouched

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    for client in clients:  # they would keep dialling the dead server's port
        client.process.send_signal(signal.SIGKILL)
        client.process.wait(timeout=10)

    checkpoint_round = checkpoint_file.load(run_dir / CHECKPOINT_FILE)[0]["round"]
    rounds = checkpoint_round + 2
    resumed = daemons.server(
        JOB,
        second_port - JOB,
        *TASK,
        *("--rounds", str(rounds), "--resume", "--out", str(run_dir)),
        name="resumed",
    )
    holder = json.loads((run_dir / "fl-server.lock").read_text())
    assert (holder["pid"], holder["port"]) == (resumed.process.pid, second_port)
    clients = [daemons.client(second_port, name) for name in ("org-a", "org-b")]
    assert resumed.wait(timeout=120) == 0, resumed.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()
    assert resumed.has_event("job_resumed", round=checkpoint_round)
    assert [row["round"] for row in read_metrics(run_dir)] == list(range(rounds + 1))
