"""Watching a real job: fl-server's admin port (--health-port) with real fl-clients, read by
fl-status and Prometheus' parser; off loopback it takes mutual TLS only (fl-certs certificates)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import BIN, Daemons, free_port, wait_for
from tests.integration.tls import provision, tls_server

JOB = 4
TASK = "tests.integration.user_task:TinyTask"
# Slow enough local training (about a second a round here) for a round to be seen in progress.
SLOW_TRAINING = ("--local-epochs", "150", "--batch-size", "16")
ROUNDS = 4


def fl_status(*args: str) -> subprocess.CompletedProcess[str]:
    """Run fl-status once (bounded)."""
    return subprocess.run(
        [str(BIN / "fl-status"), *args], capture_output=True, text=True, timeout=30, check=False
    )


def status_of(address: str, *extra: str) -> dict[str, Any] | None:
    """The status document fl-status --json prints, or None if it could not get one."""
    result = fl_status(address, "--json", *extra)
    return json.loads(result.stdout) if result.returncode == 0 else None


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_fl_status_follows_a_running_job_and_metrics_parse(
    daemons: Daemons, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    address = f"127.0.0.1:{admin}"
    server = daemons.server(
        JOB,
        port - JOB,
        *("--task", TASK, "--rounds", str(ROUNDS), "--min-clients", "2", *SLOW_TRAINING),
        *("--health-port", str(admin), "--out", str(tmp_path / "run")),
    )
    waiting = status_of(address)
    assert waiting is not None and waiting["job"]["phase"] == "waiting"
    assert waiting["clients"] == [] and waiting["job"]["rounds"] == ROUNDS
    for name in ("org-a", "org-b"):
        daemons.client(port, name)

    seen: list[dict[str, Any]] = []

    def observed(predicate) -> bool:  # type: ignore[no-untyped-def]
        status = status_of(address)
        if status is None:
            assert server.process.poll() is None, f"the job ended unwatched:\n{server.tail()}"
            return False
        seen.append(status)
        return bool(predicate(status))

    def both_connected(status: dict[str, Any]) -> bool:
        return {c["name"] for c in status["clients"] if c["connected"]} == {"org-a", "org-b"}

    wait_for(lambda: observed(both_connected), 60, "fl-status to list both clients")
    # The first round's training (a torch warm-up of seconds, then 150 epochs) keeps it open.
    table = fl_status(address)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"job {JOB} ({TASK}, fedavg): "), table.stdout
    assert "clients: 2 connected, " in table.stdout
    names = [line.split()[0] for line in lines if line.startswith("org-")]
    assert sorted(names) == ["org-a", "org-b"], table.stdout

    code, body = get(admin, "/metrics")
    assert code == 200
    families = list(text_string_to_metric_families(body.decode()))
    ours = {f.name: f for f in families if f.name.startswith("fedsilo_")}
    assert len(ours) >= 20, sorted(ours)
    assert all(f.documentation for f in families), "a family without HELP"
    assert ours["fedsilo_clients_connected"].samples[0].value == 2
    phases = {s.labels["phase"]: s.value for s in ours["fedsilo_job_phase"].samples}
    assert sum(phases.values()) == 1

    wait_for(
        lambda: observed(lambda s: s["job"]["rounds_completed"] >= 1),
        90,
        "fl-status to show the round advancing",
    )
    assert seen[0]["job"]["rounds_completed"] == 0
    advanced = seen[-1]
    assert [h["round"] for h in advanced["history"]][:2] == [0, 1]
    assert advanced["job"]["round"] >= 1
    rounds_seen = [s["job"]["round"] for s in seen]
    assert rounds_seen == sorted(rounds_seen), rounds_seen
    states = {c["state"] for s in seen for c in s["clients"]}
    assert "training" in states, states

    assert server.wait(timeout=90) == 0, server.tail()
    gone = fl_status(address)
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines() == [
        f"fl-status: error: cannot reach {address}: Connection refused"
    ]
    # The admin port logs through structlog: nothing of http.server's own lines on stderr.
    raw = [line["text"] for line in server.log_lines() if line.get("text", "").strip()]
    assert not raw, raw


def test_an_admin_port_off_loopback_without_tls_is_a_config_error(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.start(
        "fl-server",
        *("--job-id", str(JOB), "--port-base", str(port - JOB), "--host", "127.0.0.1"),
        *("--health-host", "0.0.0.0", "--health-port", str(free_port())),
        *("--out", str(tmp_path / "run")),
    )
    assert server.wait(timeout=60) == 2
    lines = server.stderr.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fl-server: error: health_host: 0.0.0.0 is not a loopback address")
    assert not (tmp_path / "run").exists(), "a refused config changed the run folder"


def tls_get(port: int, context: ssl.SSLContext) -> int:
    """GET /status over TLS as ``context`` allows; the HTTP status, or raise."""
    request = b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as secured,
    ):
        secured.sendall(request)
        reply = secured.recv(64)
    return int(reply.split()[1])


def client_context(ca: Path, bundle: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if bundle is not None:
        context.load_cert_chain(bundle / "client.pem", bundle / "client.key")
    return context


def test_off_loopback_the_admin_port_answers_only_the_federations_certificates(
    daemons: Daemons, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    certs, foreign = tmp_path / "certs", tmp_path / "foreign"
    provision(certs, port, "org-a")
    provision(foreign, port, "org-a")
    server = tls_server(
        daemons,
        certs,
        port,
        *("--rounds", "1", "--min-clients", "1"),
        *("--health-host", "0.0.0.0", "--health-port", str(admin), "--out", str(tmp_path / "run")),
    )
    address = f"127.0.0.1:{admin}"
    wait_for(lambda: server.has_event("admin_listening"), 30, "the admin port")
    assert server.has_event("admin_listening", url=f"https://0.0.0.0:{admin}/", tls=True)

    status = status_of(address, "--bundle", str(certs / "org-a"))
    assert status is not None and status["job"]["phase"] == "waiting"
    table = fl_status(address, "--bundle", str(certs / "org-a"))
    assert table.returncode == 0 and table.stdout.startswith("job 3 ")

    plaintext = fl_status(address)
    assert plaintext.returncode == 1
    assert plaintext.stderr.count("\n") == 1 and "needs --bundle" in plaintext.stderr
    assert tls_get(admin, client_context(certs / "ca.pem", certs / "org-a")) == 200
    for refused in (
        client_context(certs / "ca.pem", None),  # no client certificate
        client_context(certs / "ca.pem", foreign / "org-a"),  # one from another CA
    ):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_get(admin, refused)
    other_ca = fl_status(address, "--bundle", str(foreign / "org-a"))
    assert other_ca.returncode == 1 and "certificate verify failed" in other_ca.stderr

    server.process.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0, server.tail()
    assert server.has_event("admin_tls_refused")
