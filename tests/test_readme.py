"""The README's way to run the commands, with the venv activated and without, works as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTION = "### The commands, with or without activating the venv"
VENV = Path(sys.prefix)


def section_commands() -> list[str]:
    """The command lines of the README's code blocks in that section (comments stripped)."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", body, re.DOTALL)
    return [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]


@pytest.mark.skipif(VENV.name != ".venv", reason="the tests do not run in the README's .venv")
def test_the_readme_runs_the_commands_with_the_venv_activated_and_without() -> None:
    commands = section_commands()
    assert commands[0] == ". .venv/bin/activate"
    assert ".venv/bin/fl-certs --help" in commands
    # Run in a folder where .venv is the venv these tests run in, with a PATH that lacks it.
    script = "set -e\n" + "\n".join(commands) + "\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=VENV.parent,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("usage: fl-certs") == 3
