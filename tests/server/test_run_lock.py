"""The run-folder lock: taken by one process at a time, named in the refusal, gone with its
holder however the holder ends (kill -9 included)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.common.errors import ConfigError
from fedsilo.server.run_lock import LOCK_FILE, acquire, hold_run_folder

HOLDER = """
import sys
from pathlib import Path
from fedsilo.server.run_lock import acquire
acquire(Path(sys.argv[1]), 4, 50004)
print("held", flush=True)
sys.stdin.read()  # hold until the test closes stdin or kills this process
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on tmp_path/run."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "held\n"  # EOF ("") if it died instead
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_holder_writes_its_pid_host_port_job_and_start_time(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path / "run", 3, 50003):
        record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid()
    assert record["host"] == socket.gethostname()
    assert (record["port"], record["job_id"]) == (50003, 3)
    assert record["started"].endswith("Z")


def test_a_second_holder_is_refused_naming_the_folder_and_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    run = tmp_path / "run"
    (run / "metrics.jsonl").write_text('{"round": 0}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError) as refused:
        acquire(run, 4, 61004)
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert str(run) in message
    assert f"pid {holder.pid}" in message and "port 50004" in message and "job 4" in message
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_lock_held_in_this_process_refuses_this_process_too(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path, 1, 50001), pytest.raises(ConfigError, match="in use by"):
        acquire(tmp_path, 1, 50001)


def test_the_lock_ends_with_the_block(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path, 1, 50001):
        pass
    with hold_run_folder(tmp_path, 2, 50002):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["job_id"] == 2


def test_a_lock_left_by_a_killed_process_is_taken_over(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    run = tmp_path / "run"
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # the file stays
    with hold_run_folder(run, 4, 50004):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_holder_that_wrote_nothing_yet_is_still_a_holder(tmp_path: Path) -> None:
    fd = acquire(tmp_path, 1, 50001)
    try:
        os.ftruncate(fd, 0)  # the instant between taking the lock and writing the record
        with pytest.raises(ConfigError, match="has not written its details yet"):
            acquire(tmp_path, 1, 50001)
    finally:
        os.close(fd)


def test_a_run_folder_that_cannot_be_created_is_a_one_line_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot use run folder .*file/run"):
        acquire(tmp_path / "file" / "run", 1, 50001)
