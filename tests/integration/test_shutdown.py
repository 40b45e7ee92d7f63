"""SIGTERM on fl-server: clients are told why (Abort), the server exits 0 promptly."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.conftest import Daemons, free_port, wait_for


def test_sigterm_aborts_the_job_tells_clients_and_exits_0(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    server = daemons.server(2, port - 2, "--min-clients", "2", "--out", str(tmp_path / "run"))
    client = daemons.client(port, "waiting-org")
    wait_for(lambda: server.has_event("client_ready"), 60, "the client to be ready")

    server.process.send_signal(signal.SIGTERM)

    assert server.wait(timeout=30) == 0, server.tail()
    assert server.has_event("job_aborted", reason="server stopped by SIGTERM")
    assert client.wait(timeout=30) == 1
    assert "aborted the job: server stopped by SIGTERM" in client.stderr.read_text()
