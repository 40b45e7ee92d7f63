"""Run many fedsilo clients in one process, one FederationClient per thread (benchmark 4).

    python bench/many_clients.py --server 127.0.0.1:PORT --count 250 --prefix p0-

Each client is built as ``fl-client --insecure`` builds one (ClientConfig, resolve_endpoint,
FederationClient) and runs until the job finishes. Each opens its own channel *and its own TCP
connection*: grpc would otherwise let all channels of a process with equal options share one
connection (its global subchannel pool), which no real federation of separate silos does.
Exits 0 when every client finished, 1 otherwise; the last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from pathlib import Path

import torch

from fedsilo.client import connection
from fedsilo.client.config import ClientConfig
from fedsilo.client.session import FederationClient
from fedsilo.common.cli import exit_process
from fedsilo.common.logging import LEVELS, configure_logging, get_logger
from fedsilo.common.settings import read_config_file

_shared_options = connection.channel_options


def _own_connection_options(chunk_size: int) -> list[tuple[str, int]]:
    """The daemons' channel options plus a per-channel subchannel pool (one TCP per client)."""
    return [*_shared_options(chunk_size), ("grpc.use_local_subchannel_pool", 1)]


def run_clients(
    server: str, count: int, prefix: str, connect_timeout: float, task_config: Path
) -> dict[str, int | float | list[str]]:
    """Run ``count`` clients in threads until all end; return counts of outcomes and errors."""
    log = get_logger()
    task = read_config_file(task_config)  # the job's task and options: what every client runs
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        config = ClientConfig(
            server=server,
            name=f"{prefix}{index}",
            insecure=True,
            connect_timeout=connect_timeout,
            device="cpu",
            task=task["task"],
            task_options=task.get("task_options", {}),
        )
        try:
            FederationClient(config, connection.resolve_endpoint(config), log).run()
            outcome = "ok"
        except Exception as exc:  # reported in the summary, never swallowed silently
            outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(outcome)

    started = time.monotonic()
    threads = [
        threading.Thread(target=one, args=(index,), name=f"client-{index}", daemon=True)
        for index in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = Counter(outcome for outcome in outcomes if outcome != "ok")
    return {
        "clients": count,
        "ok": outcomes.count("ok"),
        "failed": count - outcomes.count("ok"),
        "errors": [f"{n} x {message[:300]}" for message, n in errors.most_common(5)],
        "seconds": round(time.monotonic() - started, 3),
    }


def main() -> int:
    """Parse flags, run the clients, print the summary; 0 when all finished."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the fl-server")
    parser.add_argument("--count", type=int, required=True, help="clients in this process")
    parser.add_argument("--prefix", default="m-", help="client names are PREFIX0, PREFIX1, ...")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--log-level", choices=LEVELS, default="warning")
    parser.add_argument(
        "--config", type=Path, required=True, help="TOML with the job's task and task_options"
    )
    args = parser.parse_args()
    configure_logging(args.log_level)
    torch.set_num_threads(1)
    connection.channel_options = _own_connection_options
    summary = run_clients(args.server, args.count, args.prefix, args.connect_timeout, args.config)
    print(json.dumps(summary), flush=True)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    exit_process(main())  # as the daemons do: no interpreter finalization under grpc threads
