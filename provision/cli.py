"""``fl-certs``: provision a federation's mutual-TLS material into one folder.

    DIR/ca.pem, DIR/ca-key/ca.key          the federation CA; its key stays apart from every bundle
    DIR/server/                            server.pem, server.key, ca.pem, clients.json
    DIR/<org>/                             client.pem, client.key, ca.pem, connection.json

``init`` creates a federation, ``add-org`` issues one more organisation's bundle and admits it.
Nothing existing is ever overwritten.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.common.bundles import (
    CA_CERT,
    CLIENT_CERT,
    CLIENT_KEY,
    CLIENTS_FILE,
    CONNECTION_FILE,
    NAME_PATTERN,
    SERVER_CERT,
    SERVER_KEY,
    load_client_bundle,
    load_server_bundle,
    read_private_key,
)
from fedsilo.common.cli import ArgumentParser, exit_process, run_cli
from fedsilo.common.errors import ConfigError
from fedsilo.common.ports import DEFAULT_PORT_BASE, MAX_PORT, job_port
from fedsilo.provision import certs

PROG = "fl-certs"
CA_KEY_FOLDER = "ca-key"
CA_KEY = "ca.key"
SERVER_FOLDER = "server"
# Folder names an organisation cannot take: they would land on the CA or the server bundle.
RESERVED_NAMES = frozenset({".", "..", CA_KEY_FOLDER, SERVER_FOLDER, CA_CERT})
# X.509 caps a common name at 64 characters (RFC 5280 ub-common-name).
MAX_COMMON_NAME = 64
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"^(\*\.)?{LABEL}(\.{LABEL})*$")
DEFAULT_DAYS = 365


def check_org(org: str) -> None:
    """Raise ConfigError unless ``org`` is a valid client name that fits a certificate."""
    if not NAME_PATTERN.fullmatch(org):
        raise ConfigError(
            f"organisation {org!r} is not a valid client name (letters, digits and _.@:-, "
            "1 to 128 characters)"
        )
    if len(org) > MAX_COMMON_NAME:
        raise ConfigError(
            f"organisation {org!r} is {len(org)} characters; a certificate's CN holds at most "
            f"{MAX_COMMON_NAME}"
        )
    if org in RESERVED_NAMES:
        raise ConfigError(f"organisation name {org!r} is reserved by the folder layout")


def check_server_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is an IP literal or a DNS name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if len(name) > 253 or not DNS_NAME.fullmatch(name):
            raise ConfigError(
                f"server name {name!r} is neither an IP address nor a DNS name"
            ) from None


def server_address(name: str, port: int) -> str:
    """Return ``HOST:PORT``, with an IPv6 literal in brackets."""
    try:
        if ipaddress.ip_address(name).version == 6:
            return f"[{name}]:{port}"
    except ValueError:
        pass
    return f"{name}:{port}"


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _write_bundle(
    folder: Path, key_name: str, key: ec.EllipticCurvePrivateKey, files: dict[str, bytes]
) -> None:
    certs.make_private_folder(folder)
    certs.write_private(folder / key_name, certs.private_key_pem(key))
    for name, data in files.items():
        certs.write_public(folder / name, data)


def _client_files(
    cert: x509.Certificate, ca_pem: bytes, connection: dict[str, Any], org: str
) -> dict[str, bytes]:
    return {
        CLIENT_CERT: certs.certificate_pem(cert),
        CA_CERT: ca_pem,
        CONNECTION_FILE: _json_bytes({**connection, "name": org}),
    }


def _check_unique(kind: str, names: Sequence[str]) -> None:
    if not names:
        raise ConfigError(f"give at least one {kind}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{kind} given twice: {', '.join(repeated)}")


def _check_new_federation(out: Path, server_names: Sequence[str], orgs: Sequence[str]) -> None:
    _check_unique("server name", server_names)
    _check_unique("organisation", orgs)
    for name in server_names:
        check_server_name(name)
    if len(server_names[0]) > MAX_COMMON_NAME:
        raise ConfigError(f"the first server name becomes the CN: {MAX_COMMON_NAME} chars at most")
    for org in orgs:
        check_org(org)
    if (out / CA_CERT).exists():
        raise ConfigError(f"{out / CA_CERT} already exists; refusing to overwrite a federation")
    for name in (CA_KEY_FOLDER, SERVER_FOLDER, *orgs):
        if (out / name).exists():
            raise ConfigError(f"{out / name} already exists; choose an empty --out")


def init_federation(
    out: Path,
    server_names: Sequence[str],
    orgs: Sequence[str],
    *,
    job_id: int = 0,
    port_base: int = DEFAULT_PORT_BASE,
    days: int = DEFAULT_DAYS,
) -> None:
    """Create a CA, the server bundle and one bundle per organisation in ``out``."""
    _check_new_federation(out, server_names, orgs)
    _check_days(days)
    if job_id < 0:
        raise ConfigError(f"--job-id must be >= 0 (got {job_id})")
    port = job_port(port_base, job_id)
    if not 1 <= port <= MAX_PORT:
        raise ConfigError(f"port_base + job_id = {port} is outside 1..{MAX_PORT}")

    ca_key, ca_cert = certs.make_ca(days)
    server_key, server_cert = certs.make_server_cert(ca_key, ca_cert, server_names, days)
    clients = {org: certs.make_client_cert(ca_key, ca_cert, org, days) for org in orgs}
    ca_pem = certs.certificate_pem(ca_cert)
    connection = {
        "server": server_address(server_names[0], port),
        "job_id": job_id,
        "server_name": server_names[0],
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        # ca.pem first: created exclusively, it also stops a concurrent init on the same folder.
        certs.write_public(out / CA_CERT, ca_pem)
        certs.make_private_folder(out / CA_KEY_FOLDER)
        certs.write_private(out / CA_KEY_FOLDER / CA_KEY, certs.private_key_pem(ca_key))
        server_files = {
            SERVER_CERT: certs.certificate_pem(server_cert),
            CA_CERT: ca_pem,
            CLIENTS_FILE: _json_bytes({"clients": sorted(orgs)}),
        }
        _write_bundle(out / SERVER_FOLDER, SERVER_KEY, server_key, server_files)
        for org, (key, cert) in clients.items():
            _write_bundle(out / org, CLIENT_KEY, key, _client_files(cert, ca_pem, connection, org))
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename or out}: {exc.strerror}") from exc


def add_organisation(out: Path, org: str, days: int = DEFAULT_DAYS) -> None:
    """Issue a bundle for ``org`` with the CA in ``out`` and admit it on the server."""
    check_org(org)
    _check_days(days)
    ca_path = out / CA_CERT
    if not ca_path.is_file():
        raise ConfigError(f"{ca_path} is missing; run `{PROG} init` first")
    key_path = out / CA_KEY_FOLDER / CA_KEY
    key_pem = read_private_key(key_path)
    try:
        ca_pem = ca_path.read_bytes()
        ca_key, ca_cert = certs.load_ca(ca_pem, key_pem)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use the CA in {out}: {exc}") from exc
    server_bundle = load_server_bundle(out / SERVER_FOLDER)
    allowed = server_bundle.allowed_clients
    if org in allowed or (out / org).exists():
        raise ConfigError(f"organisation {org!r} already exists in {out}")
    # The server's address and job live only in the org bundles; any existing one has them.
    template = next(
        (load_client_bundle(out / name) for name in sorted(allowed) if (out / name).is_dir()),
        None,
    )
    if template is None:
        raise ConfigError(f"no organisation bundle in {out} to take the server address from")

    key, cert = certs.make_client_cert(ca_key, ca_cert, org, days)
    connection = {
        "server": template.server,
        "job_id": template.job_id,
        "server_name": template.server_name,
    }
    clients_path = out / SERVER_FOLDER / CLIENTS_FILE
    staged = clients_path.with_name(CLIENTS_FILE + ".new")
    try:
        _write_bundle(out / org, CLIENT_KEY, key, _client_files(cert, ca_pem, connection, org))
        admitted: dict[str, object] = {"clients": sorted(allowed | {org})}
        if server_bundle.max_examples:  # the operator's caps stay as they were
            admitted["max_examples"] = dict(server_bundle.max_examples)
        staged.write_bytes(_json_bytes(admitted))
        # os.replace is atomic: the server never reads a half-written clients.json.
        os.replace(staged, clients_path)
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename or out}: {exc.strerror}") from exc


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"--days must be at least 1 (got {days})")


def comma_list(value: str) -> list[str]:
    """Split ``a,b,c`` into names; refuse an empty one."""
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty name in {value!r}")
    return names


def build_parser() -> ArgumentParser:
    """Return the fl-certs argument parser with its init and add-org commands."""
    parser = ArgumentParser(
        prog=PROG, description="Provision a federation's mutual-TLS certificates."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init", help="create the CA, the server bundle and one bundle per organisation"
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="federation folder")
    init.add_argument(
        "--server-name",
        type=comma_list,
        required=True,
        metavar="NAME[,NAME...]",
        help="DNS names or IPs clients dial; the first is the CN and goes in connection.json",
    )
    init.add_argument(
        "--orgs", type=comma_list, required=True, metavar="ORG,ORG", help="organisation names"
    )
    init.add_argument("--job-id", type=int, default=0, help="job the clients join (default 0)")
    init.add_argument(
        "--port-base", type=int, default=DEFAULT_PORT_BASE, help="port of job 0 (default 50000)"
    )
    add = commands.add_parser("add-org", help="issue a bundle for one more organisation")
    add.add_argument("--out", type=Path, required=True, metavar="DIR", help="federation folder")
    add.add_argument("--org", required=True, help="organisation name")
    for command in (init, add):
        command.add_argument(
            "--days", type=int, default=DEFAULT_DAYS, help="certificate validity (default 365)"
        )
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out the parsed command and print where its material went."""
    if args.command == "init":
        init_federation(
            args.out,
            args.server_name,
            args.orgs,
            job_id=args.job_id,
            port_base=args.port_base,
            days=args.days,
        )
        print(f"wrote {args.out}: CA, server bundle and {len(args.orgs)} organisation bundles")
        print(f"keep {args.out / CA_KEY_FOLDER} off the server and the organisations' machines")
    else:
        add_organisation(args.out, args.org, args.days)
        print(f"wrote {args.out / args.org} and admitted {args.org!r} in {SERVER_FOLDER}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-certs``."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
