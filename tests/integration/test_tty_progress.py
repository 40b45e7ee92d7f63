"""On a terminal, fl-server draws a progress bar below its readable (not JSON) log lines."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
from pathlib import Path

from tests.integration.conftest import BIN, REPO, Daemons, free_port


def test_fl_server_on_a_terminal_shows_rounds_and_clients(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    env.update(PYTHONPATH=str(REPO), FEDSILO_INSECURE="1")
    server = subprocess.Popen(
        [
            str(BIN / "fl-server"),
            *("--job-id", "0", "--port-base", str(port), "--host", "127.0.0.1"),
            *("--rounds", "2", "--min-clients", "1", "--out", str(tmp_path / "run")),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
        cwd=tmp_path,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        client = daemons.client(port, "org-a")
        while chunk := _read(controller):  # until the server exits and closes the terminal
            seen.extend(chunk)
        assert server.wait(timeout=120) == 0, seen[-2000:]
        assert client.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "2/2 [" in text and "round/s" in text  # the bar, at its end
    assert "clients 1/1" in text or "clients 0/1" in text
    assert "round_done" in text and '{"event"' not in text  # readable lines, not JSON


def _read(fd: int) -> bytes:
    """Read what the terminal has within 60 s; b"" once every writer has closed it."""
    ready, _, _ = select.select([fd], [], [], 60)
    assert ready, "the server wrote nothing for 60 s"
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: every writer has closed the terminal
        return b""
