"""Benchmark 2 of issue 6: a 1 GiB float32 model through the real daemons, both directions.

    python bench/transfer_bench.py [--repeats 3] [--mib 1024] [--json out.json]

Starts fl-server and one fl-client (plaintext, 127.0.0.1) for one round of a task whose model
is an untrained 1 GiB buffer, so the round is all transfer. Download = round_started (server
log) to model_received (client log); upload = upload_started to update_received (server log).
Peak RSS of each process comes from /usr/bin/time. The ceiling, measured in the same run: a
plain grpcio stream of 1 MiB bytes messages over loopback, the same byte count.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MIB = 1 << 20


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def grpc_ceiling(total: int) -> float:
    """GB/s of a plain grpcio client stream of 1 MiB bytes messages to a server, loopback."""
    received = []

    def sink(requests, context):  # type: ignore[no-untyped-def]
        count = 0
        for message in requests:
            count += len(message)
        received.append(count)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Sink", {"Push": grpc.stream_unary_rpc_method_handler(sink)}
    )
    options = [
        ("grpc.max_receive_message_length", 8 * MIB),
        ("grpc.max_send_message_length", 8 * MIB),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler], options=options)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    payload = bytes(MIB)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        push = channel.stream_unary("/bench.Sink/Push")
        started = time.perf_counter()
        push(iter([payload] * (total // MIB)))
        seconds = time.perf_counter() - started
    server.stop(0)
    assert received == [total]
    return total / seconds / 1e9


def stamp(line: dict[str, Any]) -> float:
    """Seconds since the epoch of a structlog line."""
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def events(path: Path) -> list[dict[str, Any]]:
    """JSON lines of a daemon's stderr.

    A line may carry text after its JSON object: a daemon that logs from another thread while
    it exits can lose the line's newline, and /usr/bin/time then appends to the same line.
    """
    decoder = json.JSONDecoder()
    out = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            out.append(decoder.raw_decode(raw)[0])
    return out


def max_rss_mib(path: Path) -> float:
    """The 'MAXRSS <kb>' that /usr/bin/time appended (possibly after a line without newline)."""
    found = re.findall(r"MAXRSS (\d+)$", path.read_text(), flags=re.MULTILINE)
    if not found:
        raise RuntimeError(f"no MAXRSS line in {path}")
    return int(found[-1]) / 1024


def one_run(mib: int, workdir: Path) -> dict[str, float]:
    """One round with a ``mib`` MiB model; return GB/s each way and peak RSS of each side."""
    port = free_port()
    config = workdir / "job.toml"
    config.write_text(
        f'task = "tests.integration.user_task:TinyTask"\n[task_options]\nballast_mb = {mib}\n'
    )
    timing = ["/usr/bin/time", "-f", "MAXRSS %M"]
    env = {"PYTHONPATH": str(REPO), "PATH": str(BIN), "FEDSILO_INSECURE": "1"}
    server_err, client_err = workdir / "server.err", workdir / "client.err"
    with server_err.open("wb") as serr, client_err.open("wb") as cerr:
        server = subprocess.Popen(
            [
                *timing,
                str(BIN / "fl-server"),
                "--job-id",
                "1",
                "--port-base",
                str(port - 1),
                "--host",
                "127.0.0.1",
                "--config",
                str(config),
                "--rounds",
                "1",
                "--min-clients",
                "1",
                "--log-level",
                "debug",
                "--out",
                str(workdir / "run"),
            ],
            stderr=serr,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        client = subprocess.Popen(
            [
                *timing,
                str(BIN / "fl-client"),
                "--server",
                f"127.0.0.1:{port}",
                "--name",
                "bench",
                "--threads",
                "1",
                "--log-level",
                "debug",
                "--connect-timeout",
                "60",
            ],
            stderr=cerr,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        if server.wait(timeout=600) != 0 or client.wait(timeout=120) != 0:
            raise RuntimeError(f"daemons failed; see {workdir}")
    srv, cli = events(server_err), events(client_err)
    started = next(stamp(e) for e in srv if e["event"] == "round_started")
    received = next(stamp(e) for e in cli if e["event"] == "model_received")
    up_start = next(stamp(e) for e in srv if e["event"] == "upload_started")
    up_done = next(stamp(e) for e in srv if e["event"] == "update_received")
    total = mib * MIB
    return {
        "download_gbps": total / (received - started) / 1e9,
        "upload_gbps": total / (up_done - up_start) / 1e9,
        "server_peak_rss_mib": max_rss_mib(server_err),
        "client_peak_rss_mib": max_rss_mib(client_err),
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ceiling = [grpc_ceiling(args.mib * MIB) for _ in range(args.repeats)]
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(args.mib, Path(tmp)))
    report: dict[str, dict[str, float]] = {}
    for key, values in [("grpc_ceiling_gbps", ceiling)] + [
        (name, [run[name] for run in runs]) for name in runs[0]
    ]:
        report[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    ceiling_median = report["grpc_ceiling_gbps"]["median"]
    for key, figure in report.items():
        ratio = ""
        if key.endswith("_gbps") and key != "grpc_ceiling_gbps":
            ratio = f"  = {figure['median'] / ceiling_median:.2f} x plain grpcio"
        print(
            f"{key:>22}: median {figure['median']:8.2f} (min {figure['min']:.2f}, "
            f"max {figure['max']:.2f}){ratio}"
        )
    print(
        f"model: {args.mib} MiB; RSS target (issue 6): < 2 x model + 200 MiB = "
        f"{2 * args.mib + 200} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
