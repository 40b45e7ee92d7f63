"""`make demo` can be given its port: the job listens there, and a taken port is refused with
one line before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, wait_for

DEMO = REPO / "tools" / "demo.py"


def demo_command(*variables: str, env: dict[str, str]) -> str:
    """The line `make -n demo VARIABLES...` would run for tools/demo.py."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**{k: v for k, v in os.environ.items() if k not in ("PORT", "DEMO_PORT")}, **env},
    )
    (line,) = [line for line in done.stdout.splitlines() if "tools/demo.py" in line]
    return line.strip()


@pytest.mark.parametrize(
    ("variables", "env", "expected"),
    [
        ((), {}, ""),
        (("DEMO_PORT=50123",), {}, " --port 50123"),
        (("PORT=50124",), {}, " --port 50124"),
        ((), {"DEMO_PORT": "50125"}, " --port 50125"),
        ((), {"PORT": "8080"}, ""),  # a PORT that is only in the environment is someone else's
    ],
)
def test_make_demo_passes_the_port_it_is_given(
    variables: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    assert demo_command(*variables, env=env).endswith(f"tools/demo.py{expected}")


def test_a_taken_port_is_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(DEMO), "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"demo: port {port} is not free")
    assert not (tmp_path / "runs").exists()


def test_the_demo_job_listens_on_the_given_port(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, str(DEMO), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "runs" / "demo" / "server.log"

    def listening() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        return any(json.loads(x).get("event") == "server_listening" for x in lines if x[:1] == "{")

    try:
        wait_for(lambda: listening() or demo.poll() is not None, 90, "the demo's server")
        assert demo.poll() is None, demo.communicate(timeout=10)
        (event,) = [
            json.loads(x) for x in log.read_text().splitlines() if '"server_listening"' in x
        ]
        assert event["port"] == port
    finally:
        demo.send_signal(signal.SIGINT)  # it stops its daemons on the way out
        try:
            demo.communicate(timeout=60)
        finally:
            demo.kill()
            demo.wait(timeout=10)
