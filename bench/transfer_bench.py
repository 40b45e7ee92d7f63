"""Benchmark 2 of issue 6: a 1 GiB float32 model through the real daemons, both directions.

    python bench/transfer_bench.py [--repeats 3] [--mib 1024] [--json out.json]

Starts fl-server and one fl-client (plaintext, 127.0.0.1) for four rounds of a task whose
model is a 1 GiB buffer and whose training does nothing (bench/bench_task.py), so a round is
all transfer. Download = round_started (server log) to model_received (client log); upload =
upload_started to update_received (server log, so the checks and the fold are included).
Round 1 and the median of rounds 2-4 (the steady state) are reported apart. Peak RSS of each
process comes from /usr/bin/time, with the RSS of a process that only imports the server as a
baseline. The ceilings, measured in the same run, interleaved with the runs: a plain grpcio
stream of 1 MiB bytes messages over loopback, and a raw TCP socket copy, the same byte count.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    BIN,
    REPO,
    events,
    free_port,
    import_baseline_mib,
    max_rss_mib,
    stamp,
)

MIB = 1 << 20
# Round 1 decodes the upload into fresh memory (page faults); the median of the later rounds
# is the steady state, where the upload lands in the memory of the previous model.
ROUNDS = 4


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


def one_run(mib: int, workdir: Path) -> dict[str, float]:
    """One round with a ``mib`` MiB model; return GB/s each way and peak RSS of each side."""
    port = free_port()
    config = workdir / "job.toml"
    config.write_text(f'task = "bench.bench_task:NoopTask"\n[task_options]\nmodel_mib = {mib}\n')
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
                str(ROUNDS),
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
                "--config",
                str(config),  # the job's task: the client runs it by its own choice
            ],
            stderr=cerr,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        if server.wait(timeout=600) != 0 or client.wait(timeout=120) != 0:
            raise RuntimeError(f"daemons failed; see {workdir}")
    srv, cli = events(server_err), events(client_err)
    total = mib * MIB
    figures: dict[str, float] = {}

    def at(log: list[dict[str, Any]], event: str, number: int) -> float:
        return next(stamp(e) for e in log if e["event"] == event and e["round"] == number)

    for label, numbers in (("first round", [1]), ("steady", list(range(2, ROUNDS + 1)))):
        downs = [at(cli, "model_received", n) - at(srv, "round_started", n) for n in numbers]
        ups = [at(srv, "update_received", n) - at(srv, "upload_started", n) for n in numbers]
        figures[f"download_gbps ({label})"] = total / statistics.median(downs) / 1e9
        figures[f"upload_gbps ({label})"] = total / statistics.median(ups) / 1e9
    figures["server_peak_rss_mib"] = max_rss_mib(server_err)
    figures["client_peak_rss_mib"] = max_rss_mib(client_err)
    return figures


def tcp_ceiling(total: int) -> float:
    """GB/s of a raw TCP socket copy over loopback in 1 MiB sends, received into one buffer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        got: list[int] = []

        def receive() -> None:
            connection, _ = listener.accept()
            with connection:
                buffer = memoryview(bytearray(MIB))
                count = 0
                while count < total:
                    count += connection.recv_into(buffer)
                got.append(count)

        reader = threading.Thread(target=receive)
        reader.start()
        payload = bytes(MIB)
        with socket.create_connection(listener.getsockname()) as sender:
            started = time.perf_counter()
            for _ in range(total // MIB):
                sender.sendall(payload)
            reader.join(timeout=120)
            seconds = time.perf_counter() - started
    assert got == [total]
    return total / seconds / 1e9


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ceilings: dict[str, list[float]] = {"grpc_ceiling_gbps": [], "tcp_ceiling_gbps": []}
    runs = []
    for _ in range(args.repeats):  # ceilings and runs interleaved: the box's load drifts
        ceilings["grpc_ceiling_gbps"].append(grpc_ceiling(args.mib * MIB))
        ceilings["tcp_ceiling_gbps"].append(tcp_ceiling(args.mib * MIB))
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(args.mib, Path(tmp)))
    report: dict[str, dict[str, float]] = {}
    for key, values in list(ceilings.items()) + [
        (name, [run[name] for run in runs]) for name in runs[0]
    ]:
        report[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    report["import_baseline_rss_mib"] = dict.fromkeys(
        ("median", "min", "max"), import_baseline_mib()
    )
    ceiling_median = report["grpc_ceiling_gbps"]["median"]
    for key, figure in report.items():
        ratio = ""
        if key.startswith(("download", "upload")):
            ratio = f"  = {figure['median'] / ceiling_median:.2f} x plain grpcio"
        print(
            f"{key:>30}: median {figure['median']:8.2f} (min {figure['min']:.2f}, "
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
