"""A federation's certificates, issued by fl-certs for real, and daemons that use them over
mutual TLS on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.conftest import BIN, Daemon, Daemons

JOB = 3  # the job the certificates name


def provision(out: Path, port: int, orgs: str) -> None:
    """Issue a federation's certificates (``fl-certs init``) for job JOB on ``port``, to ``out``."""
    subprocess.run(
        [
            str(BIN / "fl-certs"),
            "init",
            "--out",
            str(out),
            "--server-name",
            "localhost,127.0.0.1",
            "--orgs",
            orgs,
            "--job-id",
            str(JOB),
            "--port-base",
            str(port - JOB),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def tls_server(daemons: Daemons, certs: Path, port: int, *args: str) -> Daemon:
    """Start fl-server for job JOB with the server bundle under ``certs``; wait until it listens."""
    daemons.insecure = False
    return daemons.server(JOB, port - JOB, "--tls", str(certs / "server"), *args)


def bundle_client(
    daemons: Daemons, bundle: Path, port: int, *args: str, name: str | None = None
) -> Daemon:
    """Start fl-client with ``bundle`` (its certificate names the client) against 127.0.0.1:port."""
    return daemons.start(
        "fl-client",
        "--bundle",
        str(bundle),
        "--server",
        f"127.0.0.1:{port}",  # overrides the bundle's localhost; the name stays checked
        "--threads",
        "1",
        *args,
        name=name or bundle.name,
    )
