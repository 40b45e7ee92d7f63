"""deploy/README.md's walk-through across hosts, run as written: its marked code blocks go to bash
in a trusted machine's folder, a server host's and two member hosts', with fake_docker.py as
`docker` (compose services as processes). The job trains with both members on their own task
package and data, the results come out with `docker compose cp`, and nothing that the compose
files mount read-only is written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import REPO, free_port
from tests.integration.csv_task import write_csv

README = REPO / "deploy" / "README.md"
FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")
BLOCK = re.compile(r"<!-- walkthrough: ([\w-]+) -->\n```sh\n(.*?)```", re.DOTALL)
ASSIGNMENT = re.compile(r"^([A-Z_]+)=", re.MULTILINE)
ORGS = ("org-a", "org-b")
JOB_ID = 3
BLOCK_TIMEOUT = 150
ROUNDS = 5


def walkthrough_blocks() -> dict[str, str]:
    """The README's marked blocks: name -> shell text."""
    blocks = dict(BLOCK.findall(README.read_text()))
    assert blocks, f"no <!-- walkthrough: NAME --> blocks in {README}"
    return blocks


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder``, relative name -> sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class Hosts:
    """Runs walk-through blocks as bash, each host with its own stand-in Docker engine (state
    folder); stops what they started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.engines = root / "engines"
        bin_dir = root / "bin"
        bin_dir.mkdir()
        docker = bin_dir / "docker"
        docker.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
        docker.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDSILO_", "FAKE_"))}
        env.pop("PYTHONPATH", None)
        path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]])
        self.env = {
            **env,
            "PATH": path,
            "FAKE_DOCKER_TIMEOUT": "120",
            "FAKE_DOCKER_PORT_MAP": f"8081={free_port()}",
        }
        self.projects: list[Path] = []

    def run(self, block: str, host: str, cwd: Path, **variables: str) -> str:
        """Run one block on ``host`` with ``set -eu`` in ``cwd``; fail the test if it fails."""
        cwd.mkdir(parents=True, exist_ok=True)
        engine = {"FAKE_DOCKER_STATE": str(self.engines / host)}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=cwd,
            env={**self.env, **engine, **variables},
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"block in {cwd} exited {done.returncode}:\n{block}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\n{self.logs()}"
        )
        return done.stdout

    def logs(self) -> str:
        """The last lines of every service's log, for failure messages."""
        parts = []
        for log in sorted(self.engines.glob("*/*/services/*/log")):
            tail = log.read_text(errors="replace").splitlines()[-12:]
            parts.append(f"--- {log.relative_to(self.engines)}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop_all(self) -> None:
        """SIGKILL every service process the stand-in started that still runs."""
        for pid_file in self.engines.glob("*/*/services/*/pid"):
            if (pid_file.parent / "rc").exists():
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """The hosts of one walk-through, their services killed at the end whatever happened."""
    pool = Hosts(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def test_the_readme_marks_the_walkthrough_and_its_settings_are_the_ones_run() -> None:
    blocks = walkthrough_blocks()
    assert set(blocks) == {
        "operator-settings",
        "operator-provision",
        "server-host",
        "server-up",
        "member-settings",
        "member-host",
        "member-up",
        "member-done",
        "operator-results",
    }
    assert set(ASSIGNMENT.findall(blocks["operator-settings"])) == {
        "SERVER_NAME",
        "JOB_ID",
        "PORT_BASE",
        "ORGS",
        "TASK",
        "TASK_PACKAGE",
        "SERVER_BUNDLE",
        "FEDSILO",
    }
    assert set(ASSIGNMENT.findall(blocks["member-settings"])) == {
        "BUNDLE",
        "TASK",  # a member names the task it runs itself (client policy)
        "TASK_PACKAGE",
        "DATA_DIR",
        "FEDSILO",
    }


@pytest.mark.timeout(8 * BLOCK_TIMEOUT)
def test_the_walkthrough_trains_across_hosts_as_written(hosts: Hosts, tmp_path: Path) -> None:
    blocks = walkthrough_blocks()
    package = tmp_path / "src" / "csv_task"
    shutil.copytree(Path(__file__).with_name("csv_task"), package)
    port = free_port()
    operator = {
        "SERVER_NAME": "127.0.0.1",
        "JOB_ID": str(JOB_ID),
        "PORT_BASE": str(port - JOB_ID),
        "ORGS": ",".join(ORGS),
        "TASK": "csv_task:CsvTask",
        "TASK_PACKAGE": str(package),
        "SERVER_BUNDLE": str(tmp_path / "trusted" / "certs" / "server"),
        "FEDSILO": str(REPO),
    }
    hosts.run(blocks["operator-provision"], "trusted", tmp_path / "trusted", **operator)
    server_home = tmp_path / "server-host"
    hosts.run(blocks["server-host"], "server", server_home, **operator)
    server_dir = server_home / "fedsilo-server"
    read_only = {server_dir / "bundle": {}, server_dir / "task": {}}

    members = {}
    for number, org in enumerate(ORGS):
        data = tmp_path / f"{org}-data"
        data.mkdir()
        write_csv(data / "train.csv", seed=number, rows=80)
        write_csv(data / "test.csv", seed=100 + number, rows=20)
        member = {
            "BUNDLE": str(tmp_path / "trusted" / "certs" / org),
            "TASK": "csv_task:CsvTask",
            "TASK_PACKAGE": str(package),
            "DATA_DIR": str(data),
            "FEDSILO": str(REPO),
        }
        hosts.run(blocks["member-host"], org, tmp_path / f"{org}-host", **member)
        member_dir = tmp_path / f"{org}-host" / "fedsilo-member"
        members[org] = (member_dir, member)
        read_only.update({member_dir / "bundle": {}, member_dir / "task": {}, data: {}})
    for folder in read_only:
        read_only[folder] = tree_digest(folder)
    assert read_only[server_dir / "task"], "the task package did not reach task/"

    hosts.run(blocks["server-up"], "server", server_dir, **operator)
    for org, (member_dir, member) in members.items():
        hosts.run(blocks["member-up"], org, member_dir, **member)
    # `docker compose wait` exits with the container's code, so a failed job fails its block.
    printed = hosts.run(blocks["operator-results"], "server", server_dir, **operator)
    assert printed.strip() == f'container "fedsilo-job-{JOB_ID}-server-1" exited with status code 0'
    for org, (member_dir, member) in members.items():
        printed = hosts.run(blocks["member-done"], org, member_dir, **member)
        assert printed.strip().endswith("exited with status code 0")

    rows = [json.loads(line) for line in (server_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == list(range(ROUNDS + 1))
    assert sorted(client["name"] for client in rows[-1]["clients"]) == list(ORGS)
    assert rows[-1]["eval_examples"] == 2 * 20  # both members' own test.csv
    weights = torch.load(server_dir / "model.pt", weights_only=True)
    assert weights["weight"].shape == (2, 4)  # csv_task's model: the package in task/ was used
    for folder, digest in read_only.items():
        assert tree_digest(folder) == digest, f"{folder} (mounted read-only) was written"
