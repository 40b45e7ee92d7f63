"""Each connection failure says which one it is, with gRPC's own reason, as soon as it is known.

Real fl-client processes against a real fl-server (with and without --tls, bundles from
fl-certs), a closed port, a listener that never answers and a TLS listener stuck at TLS 1.1.
A failure that retrying cannot fix ends the client well before its --connect-timeout.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, Daemons, free_port
from tests.integration.tls import JOB, provision, tls_server

PATIENCE = "30"  # --connect-timeout of the clients that must not wait it out
PROMPT = 20.0  # seconds (a client's start-up included) by which those must have given up


def dial(daemons: Daemons, address: str, name: str, *args: str) -> tuple[Daemon, float]:
    """Run fl-client against ``address`` until it exits; return it and the seconds it took."""
    started = time.monotonic()
    client = daemons.start(
        "fl-client", "--server", address, "--name", name, "--threads", "1", *args, name=name
    )
    assert client.wait(timeout=90) == 1, client.tail()
    return client, time.monotonic() - started


def last_line(client: Daemon) -> str:
    """The client's last stderr line: its one-line error, after a log that is JSON throughout."""
    *log, line = client.stderr.read_text().splitlines()
    assert line.startswith("fl-client: error: no session with the server at "), line
    for raw in log:  # gRPC's C core included: wrapped, and never after the error line
        assert isinstance(json.loads(raw), dict), raw
    return line


@pytest.fixture
def certs(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A federation's certificates (fl-certs init) for a job on a free port."""
    port = free_port()
    provision(tmp_path / "certs", port, "org-a")
    yield tmp_path / "certs", port


def test_nothing_listening_is_named_with_grpcs_reason(daemons: Daemons) -> None:
    address = f"127.0.0.1:{free_port()}"
    client, _ = dial(daemons, address, "lonely", "--insecure", "--connect-timeout", "3")
    line = last_line(client)
    assert "nothing listens there (connection refused)" in line
    assert "(gRPC: UNAVAILABLE:" in line and "Connection refused" in line
    # While it retries, the reason is in the log at once, not only at the end.
    failing = [e for e in client.log_lines() if e.get("event") == "connect_failing"]
    assert failing and failing[0]["failure"] == "refused"


def test_tls_mismatches_a_foreign_ca_and_a_wrong_name_end_the_client_at_once(
    daemons: Daemons, certs: tuple[Path, int], tmp_path: Path
) -> None:
    folder, port = certs
    provision(tmp_path / "foreign", port, "org-a")
    renamed = shutil.copytree(folder / "org-a", tmp_path / "renamed")
    connection = json.loads((renamed / "connection.json").read_text())
    (renamed / "connection.json").write_text(
        json.dumps({**connection, "server_name": "elsewhere.example"})
    )
    tls_server(daemons, folder, port, "--out", str(tmp_path / "r"))
    address = f"127.0.0.1:{port}"
    timeout = ("--connect-timeout", PATIENCE)

    plaintext, seconds = dial(daemons, address, "plain", "--insecure", *timeout)
    assert seconds < PROMPT
    line = last_line(plaintext)
    assert "the server speaks TLS and this client is plaintext (--insecure)" in line
    assert "(gRPC: UNAVAILABLE:" in line and "Socket closed" in line

    foreign, seconds = dial(
        daemons, address, "foreign", "--bundle", str(tmp_path / "foreign" / "org-a"), *timeout
    )
    assert seconds < PROMPT
    line = last_line(foreign)
    assert "the server's certificate is not signed by this bundle's CA (ca.pem)" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line

    wrong_name, seconds = dial(daemons, address, "renamed", "--bundle", str(renamed), *timeout)
    assert seconds < PROMPT
    line = last_line(wrong_name)
    assert "the server's certificate does not name 'elsewhere.example'" in line
    assert "Hostname Verification Check failed" in line


def test_a_tls_client_against_a_plaintext_server_is_told_at_once(
    daemons: Daemons, certs: tuple[Path, int], tmp_path: Path
) -> None:
    folder, port = certs
    daemons.server(JOB, port - JOB, "--out", str(tmp_path / "r"))  # plaintext (--insecure)
    daemons.insecure = False
    client, seconds = dial(
        daemons,
        f"127.0.0.1:{port}",
        "tls",
        "--bundle",
        str(folder / "org-a"),
        "--connect-timeout",
        PATIENCE,
    )
    assert seconds < PROMPT
    line = last_line(client)
    assert "the server does not speak TLS" in line and "WRONG_VERSION_NUMBER" in line


def serve(listener: socket.socket, answer: ssl.SSLContext | None, stop: threading.Event) -> None:
    """Accept connections until ``stop``: hold them silently, or run ``answer``'s handshake."""
    listener.settimeout(0.2)
    held = []
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        held.append(conn)
        if answer is not None:
            # The handshake fails: that is what this listener is for.
            with contextlib.suppress(ssl.SSLError, OSError):
                answer.wrap_socket(conn, server_side=True).close()
    for conn in held:
        conn.close()


def start_listener(answer: ssl.SSLContext | None) -> tuple[str, threading.Event, threading.Thread]:
    """A real listener on a free port, served from a thread; stop it by setting the event."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def run() -> None:
        with closing(listener):
            serve(listener, answer, stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", stop, thread


def test_a_listener_that_never_answers_is_a_timeout(daemons: Daemons) -> None:
    address, stop, thread = start_listener(None)
    try:
        started = time.monotonic()
        client, seconds = dial(daemons, address, "waiting", "--insecure", "--connect-timeout", "3")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seconds >= 3.0 and time.monotonic() - started < 60
    line = last_line(client)
    assert "within 3s (--connect-timeout): no answer" in line


@pytest.mark.parametrize("verbosity", [None, "INFO"])
def test_a_server_without_a_common_tls_version_is_named(
    daemons: Daemons,
    certs: tuple[Path, int],
    monkeypatch: pytest.MonkeyPatch,
    verbosity: str | None,
) -> None:
    # gRPC's core logs each failed handshake at INFO: by default fl-client keeps those out
    # (its own line says it); an operator who asks for them gets them, as JSON lines.
    if verbosity is not None:
        monkeypatch.setenv("GRPC_VERBOSITY", verbosity)
    folder, _ = certs
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot serve TLS 1.1")
    old.load_cert_chain(folder / "server" / "server.pem", folder / "server" / "server.key")
    address, stop, thread = start_listener(old)
    daemons.insecure = False
    try:
        client, seconds = dial(
            daemons,
            address,
            "modern",
            "--bundle",
            str(folder / "org-a"),
            "--connect-timeout",
            PATIENCE,
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seconds < PROMPT
    line = last_line(client)
    assert "no TLS version in common with the server" in line and "(gRPC: UNAVAILABLE:" in line
    core = [e for e in client.log_lines() if e.get("event") == "grpc_core"]
    if verbosity is None:
        assert core == []
    else:
        handshakes = [e for e in core if "Handshake failed" in e["message"]]
        assert handshakes, core
        assert handshakes[0]["level"] == "info" and handshakes[0]["client"] == "modern"
