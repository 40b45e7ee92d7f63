"""Real daemons as real processes on 127.0.0.1, always cleaned up, every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedsilo.common.settings import read_config_file

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Daemon:
    """A started fl-server or fl-client with its output files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; fail (after killing it) if it runs past ``timeout``."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(
                f"{self.name} still running after {timeout:g}s; stderr tail:\n{self.tail()}"
            ) from None

    def log_lines(self) -> list[dict[str, Any]]:
        """Return the JSON log lines written so far (non-JSON lines are returned as text)."""
        lines = []
        for raw in self.stderr.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"text": raw})
        return lines

    def has_event(self, event: str, **fields: Any) -> bool:
        """Whether a log line with this event (and these field values) has been written."""
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            for line in self.log_lines()
        )

    def tail(self, lines: int = 30) -> str:
        """Return the last lines of stderr, for failure messages."""
        return "\n".join(self.stderr.read_text(errors="replace").splitlines()[-lines:])


class Daemons:
    """Starts daemons for one test and kills whatever is still running at its end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Daemon] = []
        # Plaintext unless a test sets this to False and passes --tls / --bundle itself.
        self.insecure = True
        # The task of the last server started, as a client config (--config FILE): each client's
        # operator runs the task the job uses (a client never takes its task from the server).
        self.client_task_args: list[str] = []

    def start(
        self, program: str, *args: str, name: str | None = None, prefix: Sequence[str] = ()
    ) -> Daemon:
        """Start ``fl-server``/``fl-client`` with ``args``; output goes to files in workdir.

        ``prefix`` runs it through another command, e.g. ``ip netns exec NS``.
        """
        name = name or f"{program}-{len(self.started)}"
        stdout, stderr = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("FEDSILO_")}
        env["PYTHONPATH"] = str(REPO)  # so that --task tests.integration.user_task:... imports
        if self.insecure:
            env["FEDSILO_INSECURE"] = "1"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [*prefix, str(BIN / program), *args],
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.workdir,
            )
        daemon = Daemon(name, process, stdout, stderr)
        if program == "fl-server":  # however it was started: clients run its task
            self.client_task_args = self.task_policy(args)
        self.started.append(daemon)
        return daemon

    def server(self, job_id: int, port_base: int, *args: str, name: str = "server") -> Daemon:
        """Start fl-server on 127.0.0.1 and wait until it listens."""
        daemon = self.start(
            "fl-server",
            "--job-id",
            str(job_id),
            "--port-base",
            str(port_base),
            "--host",
            "127.0.0.1",
            *args,
            name=name,
        )
        wait_for(
            lambda: daemon.has_event("server_listening") or daemon.process.poll() is not None,
            STARTUP_TIMEOUT,
            f"{name} to listen",
        )
        assert daemon.process.poll() is None, f"{name} exited early:\n{daemon.tail()}"
        return daemon

    def task_policy(self, server_args: Sequence[str]) -> list[str]:
        """Write the server's task (``--task``, or ``task`` and ``task_options`` of its TOML
        ``--config``) as a client config file; return the client flags that use it."""
        task, options = None, {}
        if "--config" in server_args:
            path = Path(server_args[list(server_args).index("--config") + 1])
            table = read_config_file(path)
            task, options = table.get("task"), table.get("task_options", {})
        if "--task" in server_args:
            task = server_args[list(server_args).index("--task") + 1]
        if task is None:
            return []
        lines = [f"task = {json.dumps(task)}", "[task_options]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
        path = self.workdir / "client-task.toml"
        path.write_text("\n".join(lines) + "\n")
        return ["--config", str(path)]

    def client(self, port: int, name: str, *args: str, prefix: Sequence[str] = ()) -> Daemon:
        """Start fl-client against 127.0.0.1:port, running the last server's task."""
        own_task = "--task" in args or "--config" in args
        return self.start(
            "fl-client",
            "--server",
            f"127.0.0.1:{port}",
            "--name",
            name,
            "--connect-timeout",
            "30",
            "--threads",
            "1",  # two cores shared by every daemon of a test: avoid thread thrashing
            *([] if own_task else self.client_task_args),
            *args,
            name=name,
            prefix=prefix,
        )

    def federation(
        self, job_id: int, names: Sequence[str], *server_args: str, timeout: float = 120
    ) -> Daemon:
        """Run a whole job (server on a free port, one client per name) and check all exit 0."""
        port = free_port()
        server = self.server(job_id, port - job_id, *server_args)
        clients = [self.client(port, name) for name in names]
        assert server.wait(timeout=timeout) == 0, server.tail()
        for client in clients:
            assert client.wait(timeout=30) == 0, client.tail()
        return server

    def stop_all(self) -> None:
        """Kill every daemon still running."""
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGKILL)
                daemon.process.wait(timeout=10)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Daemons of one test, killed at its end whatever happened."""
    pool = Daemons(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def toml_value(value: object) -> str:
    """Return a TOML literal for a task option (a string, integer, float or boolean)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return repr(value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_strict_json(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file refusing NaN and infinities (which strict JSON has not)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
