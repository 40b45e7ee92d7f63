"""fl-server's log stays JSON, line by line, even when gRPC's C core has something to say."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import grpc

from fedsilo.common.stderr_router import wrap_line
from tests.integration.conftest import Daemons, free_port, wait_for
from tests.integration.tls import provision, tls_server


def test_native_lines_are_wrapped_and_json_lines_pass_unchanged() -> None:
    ours = '{"event": "round_done", "round": 3}\n'
    assert wrap_line(ours, {"job_id": 1}) == ours
    core = "E1201 12:42:05.872504   26932 ssl_transport_security.cc:1558] certificate has expired"
    wrapped = json.loads(wrap_line(core + "\n", {"job_id": 1}))
    assert wrapped["event"] == "grpc_core" and wrapped["level"] == "error"
    assert wrapped["message"] == "certificate has expired" and wrapped["job_id"] == 1
    other = json.loads(wrap_line("Traceback (most recent call last):\n", {}))
    assert other["event"] == "stderr" and other["message"].startswith("Traceback")


def test_a_refused_tls_handshake_is_a_json_line_in_the_server_log(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    certs = tmp_path / "certs"
    provision(certs, port, "org-a")
    server = tls_server(daemons, certs, port, "--rounds", "1", "--min-clients", "1")
    # A plaintext client against the TLS port: refused in the handshake, by gRPC's core.
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        contextlib.suppress(grpc.FutureTimeoutError),
    ):
        grpc.channel_ready_future(channel).result(timeout=3)
    wait_for(lambda: server.has_event("grpc_core"), 30, "gRPC's own line, wrapped")
    for raw in server.stderr.read_text().splitlines():
        assert isinstance(json.loads(raw), dict), raw
