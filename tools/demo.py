"""`make demo`: one fl-server job and three fl-client processes on 127.0.0.1, 5 rounds.

Provisions a federation with fl-certs first, then runs everything over mutual TLS. The job
listens on a free port, or on ``--port PORT`` (``make demo DEMO_PORT=PORT``); a port that is
taken or out of range exits 2 with one line.

Prints one line per round as metrics.jsonl grows (the global model's loss and accuracy on the
clients' held-out data, participants, bytes each way, seconds), then shuts everything down.
Daemon logs go to runs/demo/*.log.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
RUN_DIR = Path("runs/demo")
JOB_ID = 7
ROUNDS = 5
CLIENTS = ("hospital-a", "hospital-b", "lab-c")
DEADLINE_SECONDS = 300.0
POLL_SECONDS = 0.2
MAX_PORT = 65535


def free_port() -> int:
    """Return a port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_problem(port: int) -> str | None:
    """Say why the job cannot listen on 127.0.0.1:``port``; None when it can."""
    if not JOB_ID < port <= MAX_PORT:
        return f"port {port} is outside {JOB_ID + 1}..{MAX_PORT} (port_base is port - job {JOB_ID})"
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return (
                f"port {port} is not free on 127.0.0.1 ({exc.strerror}); choose another DEMO_PORT"
            )
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the command line's options."""
    parser = argparse.ArgumentParser(
        prog="demo", description="Run a 3-client federation on 127.0.0.1 over mutual TLS."
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the job's port on 127.0.0.1 (default: a free one)"
    )
    return parser.parse_args(argv)


def start(args: list[str], log_name: str) -> subprocess.Popen[bytes]:
    """Start a daemon with stderr (its structured log) to a file in the run folder."""
    log = (RUN_DIR / log_name).open("wb")
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=log)


def format_row(row: dict[str, Any]) -> str:
    """One printed line per metrics row."""

    def num(key: str, spec: str) -> str:
        value = row.get(key)
        width = int(spec.split(".", maxsplit=1)[0].rstrip("df"))
        return f"{'-':>{width}}" if value is None else format(value, spec)

    return (
        f"{row['round']:>5}  {num('eval_loss', '8.4f')}  {num('eval_accuracy', '8.3f')}  "
        f"{len(row.get('participants', [])):>7}  {num('bytes_down', '10d')}  "
        f"{num('bytes_up', '10d')}  {num('seconds', '7.2f')}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo federation; exit 0 when the job finished and every daemon exited 0."""
    args = parse_args(argv)
    port = free_port() if args.port is None else args.port
    problem = port_problem(port)
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    certs = RUN_DIR / "certs"
    # The secure path, as an operator would do it: provision, then hand each org its bundle.
    subprocess.run(
        [
            str(BIN / "fl-certs"),
            "init",
            "--out",
            str(certs),
            "--server-name",
            "localhost,127.0.0.1",
            "--orgs",
            ",".join(CLIENTS),
            "--job-id",
            str(JOB_ID),
            "--port-base",
            str(port - JOB_ID),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    server = start(
        [
            "fl-server",
            "--job-id",
            str(JOB_ID),
            "--port-base",
            str(port - JOB_ID),
            "--host",
            "127.0.0.1",
            "--tls",
            str(certs / "server"),
            "--rounds",
            str(ROUNDS),
            "--min-clients",
            str(len(CLIENTS)),
            "--out",
            str(RUN_DIR),
            "--round-timeout",
            "60",
            "--join-timeout",
            "120",
        ],
        "server.log",
    )
    clients = [
        start(
            [
                "fl-client",
                "--bundle",
                str(certs / name),
                "--server",
                f"127.0.0.1:{port}",
                "--connect-timeout",
                "60",
                "--threads",
                "1",
            ],
            f"{name}.log",
        )
        for name in CLIENTS
    ]
    print(
        f"fedsilo demo: job {JOB_ID} on 127.0.0.1:{port}, {len(CLIENTS)} clients, "
        f"{ROUNDS} rounds of the synthetic task over mutual TLS (chance accuracy 0.100)"
    )
    print("round  eval_loss  accuracy  clients  bytes_down    bytes_up  seconds")
    metrics = RUN_DIR / "metrics.jsonl"
    printed = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            for line in lines[printed:]:
                print(format_row(json.loads(line)), flush=True)
            printed = len(lines)
            if server.poll() is not None:
                break
            time.sleep(POLL_SECONDS)
        server_rc = server.wait(timeout=max(1.0, deadline - time.monotonic()))
        client_rcs = [client.wait(timeout=30) for client in clients]
    except subprocess.TimeoutExpired:
        print(f"demo: gave up after {DEADLINE_SECONDS:g}s; see {RUN_DIR}/*.log", file=sys.stderr)
        return 1
    finally:
        for process in (server, *clients):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in lines[printed:]:
        print(format_row(json.loads(line)))
    if server_rc != 0 or any(client_rcs):
        print(
            f"demo: server exited {server_rc}, clients {client_rcs}; see {RUN_DIR}/*.log",
            file=sys.stderr,
        )
        return 1
    print(f"done: final model in {RUN_DIR}/model.pt, metrics in {metrics}, logs in {RUN_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
