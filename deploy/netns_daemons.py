"""The daemons of deploy/netns_federation.py: started in their namespaces, logged, stopped."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import Topology  # deploy/netns.py, next to this script

STOP_TIMEOUT = 10.0


class CheckFailedError(Exception):
    """A step or a check failed; the message is the line to print."""


@dataclass
class Daemon:
    """A started fl-server or fl-client, its log file (stdout and stderr together)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        """Return the log's JSON lines (other lines as ``{"text": ...}``)."""
        parsed = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = None
            parsed.append(line if isinstance(line, dict) else {"text": raw})
        return parsed

    def last_line(self) -> str:
        """Return the last non-empty log line, for messages."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line]
        return lines[-1] if lines else "(no output)"

    def wait(self, timeout: float) -> int:
        """Return the exit code; raise CheckFailedError if it is still running after ``timeout``."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailedError(
                f"{self.name} still running after {timeout:g}s ({self.log})"
            ) from None


@dataclass
class Federation:
    """The daemons started in the namespaces of ``topology``; ``stop_all`` ends them."""

    topology: Topology
    workdir: Path
    fl_bin: Path
    started: list[Daemon] = field(default_factory=list)

    def start(self, name: str, namespace: str, program: str, *args: str) -> Daemon:
        """Start ``program`` from fl-bin inside ``namespace``, logging to logs/<name>.log."""
        log = self.workdir / "logs" / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self.topology.exec_prefix(namespace), str(self.fl_bin / program), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                # Its own session: Ctrl-C reaches only this script, which then stops it in order.
                start_new_session=True,
            )
        daemon = Daemon(name, process, log)
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        """SIGTERM every daemon still running, SIGKILL those that outlive STOP_TIMEOUT."""
        running = [d for d in self.started if d.process.poll() is None]
        for daemon in running:
            daemon.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for daemon in running:
            try:
                daemon.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=STOP_TIMEOUT)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s; raise CheckFailedError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise CheckFailedError(f"timed out after {timeout:g}s waiting for {what}")
