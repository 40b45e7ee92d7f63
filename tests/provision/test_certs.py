"""fl-certs: the folder layout it writes, the certificates in it, and that grpc accepts them."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.common.errors import ConfigError
from fedsilo.provision.cli import add_organisation, init_federation

FL_CERTS = Path(sys.executable).parent / "fl-certs"
ORGS = ("org-b", "org-a")
SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "fl.example.org")
SERVICE = "fedsilo.test.Echo"
METHOD = f"/{SERVICE}/WhoAmI"
BUNDLE_FILES = {
    "server": {"server.pem", "server.key", "ca.pem", "clients.json"},
    "org": {"client.pem", "client.key", "ca.pem", "connection.json"},
}


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    init_federation(out, SERVER_NAMES, ORGS, job_id=7, port_base=41000, days=30)
    return out


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def extended_key_usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fl_certs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FL_CERTS), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_init_writes_exactly_the_layout(federation: Path) -> None:
    written = {str(path.relative_to(federation)) for path in federation.rglob("*")}
    expected = {"ca.pem", "ca-key", "ca-key/ca.key"}
    for folder, files in [("server", BUNDLE_FILES["server"])] + [
        (org, BUNDLE_FILES["org"]) for org in ORGS
    ]:
        expected |= {folder} | {f"{folder}/{name}" for name in files}
    assert written == expected


def test_keys_are_0600_and_key_folders_0700_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        init_federation(tmp_path / "fed", ["localhost"], ["org-a"])
    finally:
        os.umask(previous)
    out = tmp_path / "fed"
    assert mode(out / "ca-key") == 0o700
    for key in ("ca-key/ca.key", "server/server.key", "org-a/client.key"):
        assert mode(out / key) == 0o600, key
    for folder in ("server", "org-a"):
        assert mode(out / folder) == 0o700, folder


def test_ca_is_a_self_signed_signing_authority(federation: Path) -> None:
    ca = load_cert(federation / "ca.pem")
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for bundle in ("server", *ORGS):
        assert (federation / bundle / "ca.pem").read_bytes() == (federation / "ca.pem").read_bytes()


def test_server_certificate_names_every_server_name(federation: Path) -> None:
    cert = load_cert(federation / "server" / "server.pem")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert common_name(cert) == "localhost"
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert extended_key_usage(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load_cert(federation / "ca.pem"))


@pytest.mark.parametrize("org", ORGS)
def test_client_certificate_is_issued_to_the_org(federation: Path, org: str) -> None:
    cert = load_cert(federation / org / "client.pem")
    assert common_name(cert) == org
    assert extended_key_usage(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(load_cert(federation / "ca.pem"))


def test_certificate_from_another_ca_does_not_verify(federation: Path, tmp_path: Path) -> None:
    init_federation(tmp_path / "other", ["localhost"], ["org-a"])
    cert = load_cert(tmp_path / "other" / "org-a" / "client.pem")
    # Both CAs have the same subject name, so only the signature tells them apart.
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(load_cert(federation / "ca.pem"))


def test_clients_json_lists_the_orgs_sorted(federation: Path) -> None:
    data = json.loads((federation / "server" / "clients.json").read_text())
    assert data == {"clients": ["org-a", "org-b"]}


def test_connection_json_points_at_the_job_port(federation: Path) -> None:
    data = json.loads((federation / "org-a" / "connection.json").read_text())
    assert data == {
        "server": "localhost:41007",
        "job_id": 7,
        "server_name": "localhost",
        "name": "org-a",
    }


def test_init_refuses_an_existing_federation(federation: Path) -> None:
    before = (federation / "ca.pem").read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.pem already exists"):
        init_federation(federation, ["localhost"], ["org-c"])
    assert (federation / "ca.pem").read_bytes() == before
    assert not (federation / "org-c").exists()


@pytest.mark.parametrize(
    "orgs", [["bad name"], ["org/a"], ["server"], ["ca-key"], [".."], ["x" * 65], ["a", "a"]]
)
def test_init_refuses_bad_org_names_and_writes_nothing(tmp_path: Path, orgs: list[str]) -> None:
    with pytest.raises(ConfigError):
        init_federation(tmp_path / "fed", ["localhost"], orgs)
    assert not (tmp_path / "fed").exists()


def test_add_org_issues_a_bundle_and_admits_it(federation: Path) -> None:
    add_organisation(federation, "org-c", days=10)
    assert {p.name for p in (federation / "org-c").iterdir()} == BUNDLE_FILES["org"]
    assert mode(federation / "org-c" / "client.key") == 0o600
    cert = load_cert(federation / "org-c" / "client.pem")
    assert common_name(cert) == "org-c"
    cert.verify_directly_issued_by(load_cert(federation / "ca.pem"))
    clients = json.loads((federation / "server" / "clients.json").read_text())
    assert clients == {"clients": ["org-a", "org-b", "org-c"]}
    connection = json.loads((federation / "org-c" / "connection.json").read_text())
    assert connection == {
        "server": "localhost:41007",
        "job_id": 7,
        "server_name": "localhost",
        "name": "org-c",
    }


@pytest.mark.parametrize("org", ["org-a", "bad name", "server", ""])
def test_add_org_refuses_duplicates_and_bad_names(federation: Path, org: str) -> None:
    before = (federation / "server" / "clients.json").read_bytes()
    with pytest.raises(ConfigError):
        add_organisation(federation, org)
    assert (federation / "server" / "clients.json").read_bytes() == before


def test_add_org_needs_a_federation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca\.pem is missing"):
        add_organisation(tmp_path, "org-a")


def test_cli_init_and_add_org_exit_0(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    result = fl_certs("init", "--out", out, "--server-name", "localhost", "--orgs", "org-a,org-b")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "org-b" / "connection.json").read_text())["server"] == (
        "localhost:50000"
    )
    result = fl_certs("add-org", "--out", out, "--org", "org-c")
    assert result.returncode == 0, result.stderr
    assert (out / "org-c" / "client.pem").is_file()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["init", "--server-name", "localhost", "--orgs", "org-z"], "already exists"),
        (["add-org", "--org", "org-a"], "already exists"),
        (["add-org", "--org", "bad/name"], "not a valid client name"),
        (["init", "--server-name", "localhost"], "--orgs"),
        (["init", "--server-name", "localhost", "--orgs", "a", "--days", "x"], "--days"),
        (["rotate"], "invalid choice"),
    ],
)
def test_cli_errors_exit_2_with_one_line(federation: Path, args: list[str], says: str) -> None:
    if args[0] in ("init", "add-org"):
        args = [args[0], "--out", str(federation), *args[1:]]
    result = fl_certs(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr
    assert result.stderr.startswith("fl-certs")


# --- the material in a real mutual-TLS grpc connection --------------------------------------


def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Answer with the CN of the client certificate grpc authenticated."""
    return context.auth_context()["x509_common_name"][0]


@pytest.fixture
def tls_server(federation: Path) -> Iterator[int]:
    folder = federation / "server"
    credentials = grpc.ssl_server_credentials(
        [((folder / "server.key").read_bytes(), (folder / "server.pem").read_bytes())],
        root_certificates=(folder / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(who_am_i)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"WhoAmI": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(timeout=10)


def call(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply: bytes = channel.unary_unary(METHOD)(b"", timeout=10)
        return reply


def client_credentials(bundle: Path, roots: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(roots or bundle / "ca.pem").read_bytes(),
        private_key=(bundle / "client.key").read_bytes(),
        certificate_chain=(bundle / "client.pem").read_bytes(),
    )


def test_org_bundle_connects_with_mutual_tls(federation: Path, tls_server: int) -> None:
    assert call(tls_server, client_credentials(federation / "org-a")) == b"org-a"


def test_added_org_connects_too(federation: Path, tls_server: int) -> None:
    add_organisation(federation, "org-c")
    assert call(tls_server, client_credentials(federation / "org-c")) == b"org-c"


def test_client_certificate_from_another_ca_is_refused(
    federation: Path, tls_server: int, tmp_path: Path
) -> None:
    init_federation(tmp_path / "other", ["localhost"], ["org-a"])
    credentials = client_credentials(tmp_path / "other" / "org-a", roots=federation / "ca.pem")
    with pytest.raises(grpc.RpcError) as refused:
        call(tls_server, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(federation: Path, tls_server: int) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(federation / "ca.pem").read_bytes()
    )
    with pytest.raises(grpc.RpcError) as refused:
        call(tls_server, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_of_another_federation(
    federation: Path, tls_server: int, tmp_path: Path
) -> None:
    init_federation(tmp_path / "other", ["localhost", "127.0.0.1"], ["org-a"])
    credentials = client_credentials(federation / "org-a", roots=tmp_path / "other" / "ca.pem")
    with pytest.raises(grpc.RpcError) as refused:
        call(tls_server, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
