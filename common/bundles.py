"""The mutual-TLS bundles ``fl-certs`` writes, read back for the daemons with one-line errors.

A server bundle is a folder holding ``server.pem``, ``server.key``, ``ca.pem`` and
``clients.json`` (the names the server admits); a client bundle holds ``client.pem``,
``client.key``, ``ca.pem`` and ``connection.json`` (where and as whom to connect), and may hold
the organisation's own ``policy.toml`` (which task its client runs and within which bounds;
``fl-certs`` never writes it: the policy is the organisation's word, not the federation's).
Every problem, from a missing file to a key that others can read, is a ConfigError naming the
file.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedsilo.common.errors import ConfigError
from fedsilo.common.names import CLIENT_NAME_PATTERN
from fedsilo.common.settings import read_config_file

# The rule for client names (the same as fl-client --name); a name is a certificate's CN too.
NAME_PATTERN = CLIENT_NAME_PATTERN
CA_CERT = "ca.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENTS_FILE = "clients.json"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
CONNECTION_FILE = "connection.json"
POLICY_FILE = "policy.toml"


@dataclass(frozen=True)
class ServerBundle:
    """What the server needs for mutual TLS: its chain and key, the CA, the admitted names."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes
    allowed_clients: frozenset[str]
    # Per organisation, the most training examples it may claim (clients.json "max_examples").
    max_examples: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientBundle:
    """What a client needs for mutual TLS and where to connect with it."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes
    server: str
    job_id: int
    server_name: str
    name: str


def certificate_common_name(pem: bytes) -> str:
    """Return the common name (CN) of the first certificate in ``pem``."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError(f"certificate {cert.subject.rfc4514_string()!r} has no common name")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def load_server_bundle(folder: Path) -> ServerBundle:
    """Read and check the server bundle in ``folder``."""
    chain, key = _read_pair(folder / SERVER_CERT, folder / SERVER_KEY)
    roots = _read_certificates(folder / CA_CERT)
    path = folder / CLIENTS_FILE
    data = _read_json_object(path, {"clients"}, optional={"max_examples"})
    clients = data.get("clients")
    if not isinstance(clients, list) or not all(isinstance(name, str) for name in clients):
        raise ConfigError(f"{path}: 'clients' must be a list of names")
    for name in clients:
        _check_name(path, name)
    caps = data.get("max_examples", {})
    if not isinstance(caps, dict) or not all(
        name in clients and isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1
        for name, cap in caps.items()
    ):
        raise ConfigError(f"{path}: 'max_examples' must map admitted client names to integers >= 1")
    return ServerBundle(chain, key, roots, frozenset(clients), dict(caps))


def load_client_bundle(folder: Path) -> ClientBundle:
    """Read and check the client bundle in ``folder``."""
    cert_path = folder / CLIENT_CERT
    chain, key = _read_pair(cert_path, folder / CLIENT_KEY)
    roots = _read_certificates(folder / CA_CERT)
    path = folder / CONNECTION_FILE
    data = _read_json_object(path, {"server", "job_id", "server_name", "name"})
    for key_name in ("server", "server_name", "name"):
        if not isinstance(data.get(key_name), str) or not data[key_name]:
            raise ConfigError(f"{path}: {key_name!r} must be a non-empty string")
    job_id = data.get("job_id")
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 0:
        raise ConfigError(f"{path}: 'job_id' must be an integer >= 0 (got {job_id!r})")
    _check_name(path, data["name"])
    issued_to = certificate_common_name(chain)
    if issued_to != data["name"]:
        raise ConfigError(
            f"{cert_path} is issued to {issued_to!r} but {path} names {data['name']!r}"
        )
    return ClientBundle(
        chain, key, roots, data["server"], job_id, data["server_name"], data["name"]
    )


def read_bundle_policy(folder: Path) -> dict[str, Any] | None:
    """Return the table in the bundle's ``policy.toml``, or None when there is no such file."""
    path = folder / POLICY_FILE
    if not path.is_file():
        return None
    return read_config_file(path)


def _check_name(path: Path, name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{path}: {name!r} is not a valid client name ({NAME_PATTERN.pattern})")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _read_certificates(path: Path) -> bytes:
    pem = _read_bytes(path)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{path} does not hold a PEM certificate: {exc}") from exc
    return pem


def read_private_key(path: Path) -> bytes:
    """Return the PEM private key at ``path``; refuse one that group or others can access."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & 0o077:
        access = "readable" if mode & 0o044 else "accessible"
        raise ConfigError(f"{path} is {access} by others (mode {mode:04o}); chmod 600 {path}")
    return _read_bytes(path)


def _read_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    chain = _read_certificates(cert_path)
    key_pem = read_private_key(key_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{key_path} does not hold an unencrypted PEM private key") from exc
    leaf = x509.load_pem_x509_certificates(chain)[0]
    if key.public_key() != leaf.public_key():
        raise ConfigError(f"{key_path} is not the key of the certificate in {cert_path}")
    return chain, key_pem


def _read_json_object(
    path: Path, fields: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    try:
        data = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    missing = sorted(fields - set(data))
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    unknown = sorted(set(data) - fields - set(optional))
    if unknown:
        raise ConfigError(f"{path}: unknown {', '.join(unknown)}")
    return data
