"""The docker-compose topology without Docker: the server and each organisation in its own Linux
network namespace, over mutual TLS, plus a rogue organisation whose certificate another CA issued.

    sudo .venv/bin/python deploy/netns_federation.py [--workdir DIR] [--fl-bin DIR]

Organisation ``i`` (org-a, org-b, org-c, then the rogue) lives in its own namespace at
10.213.<i>.2 and reaches the server at 10.213.<i>.1 over its own veth pair; nothing else is
routed, so organisations cannot reach each other. The script provisions with ``fl-certs``, starts
``fl-server --tls`` in the server's namespace, waits until ``deploy/healthcheck.py`` reports it
SERVING (as compose's ``service_healthy`` does), starts ``fl-client --bundle`` in each
organisation's namespace, runs 2 rounds with all three and checks that the rogue is refused.

Prints one JSON summary line and exits 0 on success; exits 1 with one line when a check fails, 2
when network namespaces cannot be created here (not root, no ``ip``). Processes and namespaces
are always removed, also on Ctrl-C or SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from netns import Topology  # deploy/netns.py, next to this script
from netns_daemons import CheckFailedError, Daemon, Federation, wait_until

PROG = "netns_federation"
HERE = Path(__file__).resolve().parent
ORGS = ("org-a", "org-b", "org-c")
ROGUE = "rogue"
JOB_ID = 1
PORT_BASE = 50000
PORT = PORT_BASE + JOB_ID  # inside the server's own namespace: nothing else listens there
HEALTH_PORT = 8081  # on the server namespace's loopback
ROUNDS = 2
PROVISION_TIMEOUT = 60.0
HEALTHY_TIMEOUT = 60.0
ROGUE_TIMEOUT = 60.0
JOB_TIMEOUT = 180.0
CLIENT_EXIT_TIMEOUT = 30.0


class NamespacesUnavailableError(Exception):
    """This machine does not let us create network namespaces; the message says why."""


def python_of(fl_bin: Path) -> str:
    """The interpreter that has fedsilo (and grpc) installed: fl-bin's own, else this one."""
    candidate = fl_bin / "python"
    return str(candidate) if os.access(candidate, os.X_OK) else sys.executable


def provision(fl_bin: Path, out: Path, server_names: Sequence[str], orgs: Sequence[str]) -> None:
    """Run ``fl-certs init`` into ``out``; raise CheckFailedError with its error line."""
    command = [
        str(fl_bin / "fl-certs"),
        "init",
        "--out",
        str(out),
        "--server-name",
        ",".join(server_names),
        "--orgs",
        ",".join(orgs),
        "--job-id",
        str(JOB_ID),
        "--port-base",
        str(PORT_BASE),
    ]
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=PROVISION_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise CheckFailedError(
            f"fl-certs init --out {out} took over {PROVISION_TIMEOUT:g}s"
        ) from None
    if done.returncode != 0:
        raise CheckFailedError(f"fl-certs init --out {out} failed: {done.stderr.strip()}")


def create_namespaces(topology: Topology) -> None:
    """Create the namespaces; raise NamespacesUnavailableError with the system's reason."""
    try:
        topology.create()
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or b"").decode(errors="replace").strip() or str(exc)
        raise NamespacesUnavailableError(f"`{' '.join(map(str, exc.cmd))}`: {reason}") from exc
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired) as exc:
        raise NamespacesUnavailableError(str(exc)) from exc


def succeeds(command: Sequence[str], timeout: float = 15.0) -> bool:
    """Whether ``command`` exits 0 within ``timeout`` seconds (its output is discarded)."""
    try:
        done = subprocess.run(command, check=False, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def is_healthy(topology: Topology, python: str) -> bool:
    """Run deploy/healthcheck.py inside the server's namespace (where its loopback is)."""
    probe = [
        *topology.exec_prefix(topology.server_ns),
        python,
        str(HERE / "healthcheck.py"),
        str(HEALTH_PORT),
    ]
    return succeeds(probe)


def can_connect(topology: Topology, python: str, namespace: str, address: str) -> bool:
    """Whether a TCP connection from ``namespace`` to ``address``:PORT succeeds within 2 s."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {PORT}), timeout=2).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    probe = [*topology.exec_prefix(namespace), python, "-c", code]
    return succeeds(probe)


def check_isolation(topology: Topology, python: str) -> None:
    """Each organisation reaches the server on its own link and on no other organisation's."""
    for org in range(1, len(ORGS) + 1):
        namespace = topology.org_ns(org)
        if not can_connect(topology, python, namespace, topology.server_address(org)):
            raise CheckFailedError(
                f"{ORGS[org - 1]} cannot reach the server at {topology.server_address(org)}"
            )
        for other in range(1, len(ORGS) + 1):
            if other != org and can_connect(
                topology, python, namespace, topology.server_address(other)
            ):
                raise CheckFailedError(
                    f"{ORGS[org - 1]} reaches {ORGS[other - 1]}'s link; not isolated"
                )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the rows of the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"cannot read {path}: {exc}") from exc


def prepare_workdir(workdir: Path) -> None:
    """Create ``workdir`` and its logs folder; refuse one holding an earlier run."""
    for name in ("certs", "rogue-certs", "run", "logs"):
        if (workdir / name).exists():
            raise CheckFailedError(
                f"{workdir / name} exists from an earlier run; choose an empty --workdir"
            )
    (workdir / "logs").mkdir(parents=True)


def start_server(federation: Federation, certs: Path, python: str) -> Daemon:
    """Start fl-server --tls in the server's namespace; return once it reports SERVING."""
    topology, workdir = federation.topology, federation.workdir
    server = federation.start(
        "server",
        topology.server_ns,
        "fl-server",
        *("--job-id", str(JOB_ID), "--port-base", str(PORT_BASE), "--host", "0.0.0.0"),
        *("--tls", str(certs / "server"), "--health-port", str(HEALTH_PORT)),
        *("--rounds", str(ROUNDS), "--min-clients", str(len(ORGS))),
        *("--out", str(workdir / "run"), "--join-timeout", "120", "--round-timeout", "60"),
    )
    try:
        wait_until(
            lambda: server.process.poll() is not None or is_healthy(topology, python),
            HEALTHY_TIMEOUT,
            "the server to report SERVING",
        )
    except CheckFailedError as exc:
        raise CheckFailedError(f"{exc}; server log: {server.last_line()}") from None
    if server.process.poll() is not None:
        raise CheckFailedError(
            f"the server exited with {server.process.returncode}: {server.last_line()}"
        )
    return server


def start_clients(
    federation: Federation, certs: Path, rogue_certs: Path
) -> tuple[Daemon, list[Daemon]]:
    """Start the rogue and every organisation's fl-client, each in its own namespace."""
    topology = federation.topology
    rogue = len(ORGS) + 1
    intruder = federation.start(
        ROGUE,
        topology.org_ns(rogue),
        "fl-client",
        *("--bundle", str(rogue_certs / ROGUE)),
        *("--server", f"{topology.server_address(rogue)}:{PORT}"),
        *("--connect-timeout", "5", "--threads", "1"),
    )
    members = [
        federation.start(
            name,
            topology.org_ns(org),
            "fl-client",
            *("--bundle", str(certs / name)),
            *("--server", f"{topology.server_address(org)}:{PORT}"),
            *("--connect-timeout", "30", "--threads", "1"),
        )
        for org, name in enumerate(ORGS, 1)
    ]
    return intruder, members


def await_exits(server: Daemon, intruder: Daemon, members: Sequence[Daemon]) -> int:
    """Wait for every daemon to end as it should; return the rogue's exit code."""
    rogue_code = intruder.wait(ROGUE_TIMEOUT)
    if rogue_code == 0:
        raise CheckFailedError(
            "the rogue client exited 0: a certificate of another CA was accepted"
        )
    server_code = server.wait(JOB_TIMEOUT)
    if server_code != 0:
        raise CheckFailedError(f"the server exited with {server_code}: {server.last_line()}")
    for member in members:
        code = member.wait(CLIENT_EXIT_TIMEOUT)
        if code != 0:
            raise CheckFailedError(f"{member.name} exited with {code}: {member.last_line()}")
    return rogue_code


def check_run(server: Daemon, run_dir: Path) -> dict[str, Any]:
    """Check who joined and what the run folder holds; return the last metrics row."""
    events = server.lines()
    joined = sorted({str(e.get("client")) for e in events if e.get("event") == "client_joined"})
    if ROGUE in joined:
        raise CheckFailedError("the rogue client appears as client_joined in the server log")
    if joined != sorted(ORGS):
        raise CheckFailedError(f"joined {joined}, expected {sorted(ORGS)}")
    rows = read_metrics(run_dir)
    if [row.get("round") for row in rows] != list(range(ROUNDS + 1)):
        raise CheckFailedError(f"metrics rounds are {[row.get('round') for row in rows]}")
    participants = sorted(client["name"] for client in rows[-1].get("clients", []))
    if participants != sorted(ORGS):
        raise CheckFailedError(f"round {ROUNDS} had participants {participants}")
    if not (run_dir / "model.pt").is_file():
        raise CheckFailedError(f"{run_dir / 'model.pt'} is missing")
    return rows[-1]


def run(workdir: Path, fl_bin: Path) -> dict[str, Any]:
    """Provision, run the federation in namespaces, check it; return the summary."""
    started_at = time.monotonic()
    for program in ("fl-certs", "fl-server", "fl-client"):
        if not os.access(fl_bin / program, os.X_OK):
            raise CheckFailedError(f"{fl_bin / program} is not an executable; give --fl-bin")
    prepare_workdir(workdir)
    python = python_of(fl_bin)
    topology = Topology(orgs=len(ORGS) + 1)  # the last organisation is the rogue
    federation = Federation(topology, workdir, fl_bin)
    try:
        create_namespaces(topology)
        addresses = {name: topology.server_address(org) for org, name in enumerate(ORGS, 1)}
        certs, rogue_certs = workdir / "certs", workdir / "rogue-certs"
        provision(fl_bin, certs, list(addresses.values()), ORGS)
        provision(fl_bin, rogue_certs, [topology.server_address(len(ORGS) + 1)], [ROGUE])
        server = start_server(federation, certs, python)
        check_isolation(topology, python)  # with the server listening, a refusal means no route
        intruder, members = start_clients(federation, certs, rogue_certs)
        rogue_code = await_exits(server, intruder, members)
        last = check_run(server, workdir / "run")
        return {
            "rounds": last["round"],
            "participants": sorted(client["name"] for client in last["clients"]),
            "rogue_refused": True,
            "rogue_exit_code": rogue_code,
            "rogue_error": intruder.last_line(),
            "isolated": True,
            "server_addresses": addresses,
            "eval_loss": last.get("eval_loss"),
            "eval_accuracy": last.get("eval_accuracy"),
            "seconds": round(time.monotonic() - started_at, 1),
            "workdir": str(workdir),
        }
    finally:
        with signals_deferred():
            federation.stop_all()  # processes first, so that nothing holds the namespaces
            topology.destroy()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block, so that a second Ctrl-C can't cut cleanup."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the command line's options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a 3-organisation federation plus a rogue in Linux network namespaces "
        "(the docker-compose topology without Docker). Needs root.",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where certificates, logs and the run folder go (default: a new temporary folder)",
    )
    parser.add_argument(
        "--fl-bin",
        type=Path,
        default=Path(sys.executable).parent,
        metavar="DIR",
        help="folder holding fl-server, fl-client and fl-certs (default: this Python's)",
    )
    return parser.parse_args(argv)


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that the cleanup in ``run`` runs."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; return its exit code."""
    args = parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="fedsilo-netns-"))).resolve()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        summary = run(workdir, args.fl_bin.resolve())
    except NamespacesUnavailableError as exc:
        print(f"{PROG}: cannot create network namespaces here: {exc}", file=sys.stderr)
        return 2
    except CheckFailedError as exc:
        logs = workdir / "logs"
        where = f" (logs in {logs})" if logs.is_dir() else ""
        print(f"{PROG}: FAILED: {exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; daemons stopped, namespaces removed", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
