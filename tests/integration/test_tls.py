"""Mutual TLS end to end: certificates from fl-certs, fl-server --tls, fl-client --bundle.
Clients of another federation, not admitted, or claiming another's name never reach the job."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from fedsilo.provision.certs import certificate_pem, load_ca, make_client_cert, private_key_pem
from tests.integration.conftest import BIN, Daemons, free_port, read_metrics, wait_for
from tests.integration.tls import JOB, bundle_client, provision, tls_server


def expired_copy(bundle: Path, certs: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose certificate (same CA, same name) has already expired."""
    shutil.copytree(bundle, out)
    ca_key, ca_cert = load_ca(
        (certs / "ca.pem").read_bytes(), (certs / "ca-key" / "ca.key").read_bytes()
    )
    key, cert = make_client_cert(ca_key, ca_cert, bundle.name, days=0)  # valid until "now"
    (out / "client.pem").write_bytes(certificate_pem(cert))
    (out / "client.key").write_bytes(private_key_pem(key))
    return out


def test_a_federation_over_mutual_tls_admits_only_its_own_certificates(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    certs, foreign = tmp_path / "certs", tmp_path / "foreign"
    provision(certs, port, "org-a,org-b,org-c")
    provision(foreign, port, "org-a")
    # org-c has a valid certificate of this federation but is no longer admitted.
    clients_file = certs / "server" / "clients.json"
    clients_file.write_text(json.dumps({"clients": ["org-a", "org-b"]}))
    connection = json.loads((certs / "org-a" / "connection.json").read_text())
    assert connection["server"] == f"localhost:{port}" and connection["job_id"] == JOB

    server = tls_server(
        daemons, certs, port, "--rounds", "2", "--min-clients", "2", "--out", str(tmp_path / "run")
    )

    def client(bundle: Path, name: str, *extra: str):
        return bundle_client(daemons, bundle, port, "--connect-timeout", "4", *extra, name=name)

    expired = client(expired_copy(certs / "org-a", certs, tmp_path / "expired"), "expired")
    impostor = client(foreign / "org-a", "impostor")
    retired = client(certs / "org-c", "retired")
    name_thief = client(certs / "org-b", "thief", "--name", "org-a")
    assert expired.wait(timeout=60) == 1
    assert "no session" in expired.stderr.read_text().splitlines()[-1]
    # Refused in the handshake, before any fedsilo code runs: gRPC's transport logs it.
    assert "certificate has expired" in server.stderr.read_text()
    assert impostor.wait(timeout=60) == 1
    assert "no session" in impostor.stderr.read_text().splitlines()[-1]
    assert retired.wait(timeout=60) == 1
    assert "NOT_ADMITTED" in retired.stderr.read_text() and "'org-c' is not admitted" in (
        retired.stderr.read_text()
    )
    assert name_thief.wait(timeout=60) == 1
    assert "may not use the client name 'org-a'" in name_thief.stderr.read_text()

    members = [client(certs / org, org) for org in ("org-a", "org-b")]
    assert server.wait(timeout=90) == 0, server.tail()
    for member in members:
        assert member.wait(timeout=30) == 0, member.tail()
    rows = read_metrics(tmp_path / "run")
    assert [row["round"] for row in rows] == [0, 1, 2]
    joined = {line["client"] for line in server.log_lines() if line.get("event") == "client_joined"}
    assert joined == {"org-a", "org-b"}
    refused = [line for line in server.log_lines() if line.get("code") == "NOT_ADMITTED"]
    assert len(refused) == 2
    log_text = server.stderr.read_text() + "".join(m.stderr.read_text() for m in members)
    assert "PRIVATE KEY" not in log_text and "BEGIN CERTIFICATE" not in log_text


def test_fl_certs_add_org_admits_a_new_organisation_without_a_restart(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    certs = tmp_path / "certs"
    provision(certs, port, "org-a")
    server = tls_server(
        daemons, certs, port, "--rounds", "1", "--min-clients", "2", "--out", str(tmp_path / "run")
    )
    first = bundle_client(daemons, certs / "org-a", port)
    wait_for(lambda: server.has_event("client_ready", client="org-a"), 60, "org-a ready")
    subprocess.run(
        [str(BIN / "fl-certs"), "add-org", "--out", str(certs), "--org", "org-new"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    late = bundle_client(daemons, certs / "org-new", port)
    assert server.wait(timeout=90) == 0, server.tail()
    assert first.wait(timeout=30) == 0 and late.wait(timeout=30) == 0
