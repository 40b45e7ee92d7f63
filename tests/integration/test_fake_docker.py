"""The docker stand-in that runs the walk-through reads compose files as compose does, and refuses
in one line what it cannot do faithfully rather than doing something else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.fake_docker import interpolate

FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),  # :- also replaces an empty value
        ("${A-x}", {"A": ""}, ""),  # - only an unset one
        ("${A}:${A}", {"A": "5"}, "5:5"),
        ("$${A}", {"A": "5"}, "${A}"),  # $$ is a literal $
        ("${A}", {}, ""),
    ],
)
def test_variables_are_substituted_as_compose_does(
    text: str, variables: dict[str, str], expected: str
) -> None:
    assert interpolate({"k": [text]}, variables) == {"k": [expected]}


def run_stand_in(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the stand-in in ``tmp_path`` with its state there."""
    return subprocess.run(
        [sys.executable, str(FAKE_DOCKER), *args],
        cwd=tmp_path,
        env={"FAKE_DOCKER_STATE": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_what_it_cannot_do_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  web:\n"
        "    image: fedsilo:latest\n"
        "    command: [fl-server, --help]\n"
        '    ports: ["8080:80"]\n'
        "  db:\n"
        "    image: postgres:16\n"
    )
    for args, reason in [
        (("build", "."), "only `docker compose`"),
        (("compose", "up", "-d", "web"), "published port 8080:80 must equal"),
        (("compose", "up", "-d", "db"), "image postgres:16 cannot be run"),
        (("compose", "up", "web"), "only `up -d`"),
    ]:
        done = run_stand_in(tmp_path, *args)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert reason in line
    assert not list((tmp_path / "state").glob("*/services/*"))  # nothing was started
