"""``fl-status HOST:PORT``: what a running job is doing, read from its admin port.

Prints the job, its round and every client as a table (``--json``: the status document as
the server sent it; ``--watch S``: again every S seconds). An admin port off loopback needs
mutual TLS: ``--bundle`` names a client bundle of the federation (from fl-certs). Exit codes:
0 shown, 1 the port cannot be reached or is not a job's admin port, 2 a usage error.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fedsilo.common.bundles import CA_CERT, CLIENT_CERT, CLIENT_KEY, load_client_bundle
from fedsilo.common.cli import ArgumentParser, exit_process, run_cli
from fedsilo.common.errors import ConfigError, ConnectError, FedsiloError
from fedsilo.common.ports import MAX_PORT

PROG = "fl-status"
CLEAR_SCREEN = "\x1b[H\x1b[2J"
MAX_BODY_BYTES = 16 << 20  # a status document is kilobytes; refuse to read without bound


@dataclass(frozen=True)
class Target:
    """Where the admin port is, and how to talk to it."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_name: str | None = None

    @property
    def address(self) -> str:
        """HOST:PORT as given."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); raise ConfigError naming what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        raise ConfigError(f"{value!r} is not HOST:PORT (the server's --health-port)")
    return host, int(port)


def client_tls(bundle: Path) -> tuple[ssl.SSLContext, str]:
    """Return a context presenting the bundle's certificate, and the server name to check."""
    loaded = load_client_bundle(bundle)  # one-line errors for missing files, readable keys
    context = ssl.create_default_context(cafile=str(bundle / CA_CERT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(bundle / CLIENT_CERT, bundle / CLIENT_KEY)
    return context, loaded.server_name


class _MutualTLSConnection(http.client.HTTPConnection):
    """HTTPS to an address, checking the certificate against another name (the bundle's)."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        assert target.tls is not None
        self._tls = target.tls
        self._server_name = target.server_name or target.host

    def connect(self) -> None:
        """Open the TCP connection and do the TLS handshake."""
        plain = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(plain, server_hostname=self._server_name)
        except BaseException:
            plain.close()
            raise


def fetch(target: Target, path: str, timeout: float) -> bytes:
    """GET ``path`` from the admin port; raise ConnectError/FedsiloError in one line."""
    connection: http.client.HTTPConnection = (
        _MutualTLSConnection(target, timeout)
        if target.tls is not None
        else http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    )
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_BODY_BYTES)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectError(
            f"TLS with {target.address} failed: certificate verify failed: {exc.verify_message}"
        ) from exc
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS with {target.address} failed: {exc.reason or exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        # Plaintext against a TLS port: the server ends the handshake it cannot read.
        hung_up = isinstance(exc, (ConnectionResetError, http.client.BadStatusLine))
        hint = " (an admin port off loopback needs --bundle)" if hung_up and not target.tls else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectError(
            f"cannot reach {target.address}: {reason or type(exc).__name__}{hint}"
        ) from exc
    finally:
        connection.close()
    if response.status != 200:
        raise FedsiloError(f"{target.address}{path} answered HTTP {response.status}")
    return body


def fetch_status(target: Target, timeout: float) -> dict[str, Any]:
    """Return the job's status document."""
    body = fetch(target, "/status", timeout)
    try:
        status = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedsiloError(f"{target.address} is not a fedsilo admin port (no JSON)") from exc
    if not isinstance(status, dict) or not isinstance(status.get("job"), dict):
        raise FedsiloError(f"{target.address} is not a fedsilo admin port")
    return status


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def format_status(status: dict[str, Any]) -> str:
    """Return the status document as the table fl-status prints."""
    job = status["job"]
    if job["phase"] == "evaluating":
        where = "final evaluation"
    else:
        where = f"round {job['round']} of {job['rounds']}"
    lines = [
        f"job {job['job_id']} ({job['task']}, {job['strategy']}): {job['phase']}, {where}, "
        f"{job['rounds_completed']} completed, up {_seconds(job['uptime_seconds'])}",
    ]
    current = status.get("round")
    if current:
        lines.append(
            f"round {current['number']}: {current['delivered']} of {len(current['selected'])} "
            f"updates in, {len(current['dropped'])} dropped, "
            f"{_seconds(current['elapsed_seconds'])} so far"
        )
    if job.get("stop_reason"):
        lines.append(f"stopping: {job['stop_reason']}")
    lines.append(
        f"clients: {status['clients_connected']} connected, {status['clients_ready']} ready"
    )
    clients = [
        [
            c["name"],
            str(c["client_id"]),
            c["detail"],
            _seconds(c.get("stage_seconds")) if c["connected"] else "",
        ]
        for c in status["clients"]
    ]
    if clients:
        lines += ["", *_table(["CLIENT", "ID", "STATE", "FOR"], clients, {1, 3})]
    history = status.get("history") or []
    if history:
        rows = [
            [
                str(h["round"]),
                _number(h.get("train_loss")),
                _number(h.get("eval_loss")),
                "-" if h.get("eval_accuracy") is None else f"{h['eval_accuracy']:.1%}",
                _number(h.get("seconds"), 2),
            ]
            for h in history[-10:]
        ]
        header = ["ROUND", "TRAIN LOSS", "EVAL LOSS", "EVAL ACC", "SECONDS"]
        lines += ["", *_table(header, rows, {0, 1, 2, 3, 4})]
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    """Return the fl-status argument parser."""
    parser = ArgumentParser(prog=PROG, description="Show what a running fl-server job is doing.")
    parser.add_argument("address", metavar="HOST:PORT", help="the job's admin port")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="show it again every SECONDS (Ctrl-C ends)"
    )
    parser.add_argument(
        "--bundle", type=Path, metavar="DIR", help="client bundle (fl-certs) for mutual TLS"
    )
    parser.add_argument(
        "--server-name", help="name the server's certificate must hold (default: the bundle's)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (default 5)"
    )
    return parser


def show(target: Target, as_json: bool, timeout: float, clear: bool) -> None:
    """Fetch the status once and print it."""
    status = fetch_status(target, timeout)
    text = json.dumps(status, indent=2) if as_json else format_status(status)
    print(f"{CLEAR_SCREEN if clear else ''}{text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-status``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        host, port = parse_address(args.address)
        if args.watch is not None and args.watch <= 0:
            raise ConfigError("--watch must be a positive number of seconds")
        if args.timeout <= 0:
            raise ConfigError("--timeout must be a positive number of seconds")
        tls, name = client_tls(args.bundle) if args.bundle is not None else (None, None)
        target = Target(host, port, tls, args.server_name or name)
        if args.watch is None:
            show(target, args.json, args.timeout, clear=False)
            return 0
        clear = sys.stdout.isatty() and not args.json
        try:
            while True:
                show(target, args.json, args.timeout, clear)
                time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0

    return run_cli(PROG, body)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
