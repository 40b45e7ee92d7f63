"""Bundle loaders: they read what fl-certs wrote and name the file behind every problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedsilo.common.bundles import (
    certificate_common_name,
    load_client_bundle,
    load_server_bundle,
)
from fedsilo.common.errors import ConfigError
from fedsilo.provision.cli import init_federation


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    init_federation(out, ["fl.example.org", "10.0.0.5"], ["org-a", "org-b"], job_id=3)
    return out


def test_server_bundle_holds_what_init_wrote(federation: Path) -> None:
    folder = federation / "server"
    bundle = load_server_bundle(folder)
    assert bundle.certificate_chain == (folder / "server.pem").read_bytes()
    assert bundle.private_key == (folder / "server.key").read_bytes()
    assert bundle.root_certificates == (federation / "ca.pem").read_bytes()
    assert bundle.allowed_clients == frozenset({"org-a", "org-b"})


def test_client_bundle_holds_what_init_wrote(federation: Path) -> None:
    folder = federation / "org-b"
    bundle = load_client_bundle(folder)
    assert bundle.certificate_chain == (folder / "client.pem").read_bytes()
    assert bundle.private_key == (folder / "client.key").read_bytes()
    assert bundle.root_certificates == (federation / "ca.pem").read_bytes()
    assert (bundle.server, bundle.job_id) == ("fl.example.org:50003", 3)
    assert (bundle.server_name, bundle.name) == ("fl.example.org", "org-b")


def test_common_name_of_each_certificate(federation: Path) -> None:
    assert certificate_common_name((federation / "org-a" / "client.pem").read_bytes()) == "org-a"
    server_pem = (federation / "server" / "server.pem").read_bytes()
    assert certificate_common_name(server_pem) == "fl.example.org"


def test_common_name_of_garbage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        certificate_common_name(b"not a certificate")


@pytest.mark.parametrize("name", ["server.pem", "server.key", "ca.pem", "clients.json"])
def test_missing_server_file_is_named(federation: Path, name: str) -> None:
    (federation / "server" / name).unlink()
    with pytest.raises(ConfigError, match=rf"server/{name} is missing"):
        load_server_bundle(federation / "server")


@pytest.mark.parametrize("name", ["client.pem", "client.key", "ca.pem", "connection.json"])
def test_missing_client_file_is_named(federation: Path, name: str) -> None:
    (federation / "org-a" / name).unlink()
    with pytest.raises(ConfigError, match=rf"org-a/{name} is missing"):
        load_client_bundle(federation / "org-a")


@pytest.mark.parametrize(("folder", "key"), [("server", "server.key"), ("org-a", "client.key")])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_readable_by_others_is_refused(
    federation: Path, folder: str, key: str, mode: int
) -> None:
    path = federation / folder / key
    path.chmod(mode)
    load = load_server_bundle if folder == "server" else load_client_bundle
    with pytest.raises(ConfigError, match=rf"{folder}/{key} is readable by others.*chmod 600"):
        load(federation / folder)


def test_key_of_another_certificate_is_refused(federation: Path) -> None:
    shutil.copyfile(federation / "org-b" / "client.key", federation / "org-a" / "client.key")
    with pytest.raises(ConfigError, match=r"org-a/client\.key is not the key of the certificate"):
        load_client_bundle(federation / "org-a")


def test_connection_naming_another_org_is_refused(federation: Path) -> None:
    path = federation / "org-a" / "connection.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "org-b"}))
    with pytest.raises(ConfigError, match=r"issued to 'org-a' but .*connection\.json"):
        load_client_bundle(federation / "org-a")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"clients": "org-a"}', "must be a list of names"),
        ('{"clients": ["bad name"]}', "not a valid client name"),
        ('{"clients": [], "extra": 1}', "unknown extra"),
        ("{}", "missing clients"),
        ('{"clients": ["org-a"], "max_examples": {"org-b": 10}}', "admitted client names"),
        ('{"clients": ["org-a"], "max_examples": {"org-a": 0}}', "integers >= 1"),
        ('{"clients": ["org-a"], "max_examples": {"org-a": true}}', "integers >= 1"),
        ('{"clients": ["org-a"], "max_examples": [10]}', "must map admitted"),
    ],
)
def test_bad_clients_json_is_named(federation: Path, text: str, says: str) -> None:
    (federation / "server" / "clients.json").write_text(text)
    with pytest.raises(ConfigError, match=rf"server/clients\.json.*{says}"):
        load_server_bundle(federation / "server")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("job_id", -1, "'job_id' must be an integer"),
        ("job_id", True, "'job_id' must be"),
        ("server", "", "'server' must be a non-empty string"),
    ],
)
def test_bad_connection_json_is_named(
    federation: Path, field: str, value: object, says: str
) -> None:
    path = federation / "org-a" / "connection.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ConfigError, match=rf"org-a/connection\.json: {says}"):
        load_client_bundle(federation / "org-a")
