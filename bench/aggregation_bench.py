"""Benchmark 5 of issue 6: FedAvg over 16 uploads of a 256 MiB model; the server's peak memory.

    python bench/aggregation_bench.py [--clients 16] [--mib 256] [--orders natural,reverse]
                                      [--json out.json]

One round through the real daemons (plaintext on 127.0.0.1): fl-server and one fl-client
process per client. The task (``StaggeredTask`` below) makes client ``p``'s update its model
plus ``p`` and holds each client back before it uploads, so that the uploads reach the server
in the order asked for: ``natural`` (client ids ascending, the order they are folded in),
``reverse`` (every upload but the last arrives before its turn and must wait: the server spills
it to disk) or ``shuffled`` (a seeded permutation). Peak RSS from /usr/bin/time; the baseline
is the RSS of a process that only imports the server (Python, torch, grpc), measured in the
same run. Each run also checks the aggregate: every order must give the same model, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import BIN, REPO, events, free_port, import_baseline_mib, max_rss_mib

MIB = 1 << 20
TENSORS = 16


class StaggeredTask:
    """A ``mib`` MiB model in 16 float32 tensors; client p's update is the model plus p.

    Client p waits ``stagger`` seconds times its place in ``order`` before it uploads.
    """

    def __init__(
        self, mib: float = 256, clients: int = 16, order: str = "natural", stagger: float = 0.0
    ) -> None:
        self.elements = int(mib * MIB) // 4 // TENSORS
        self.clients, self.order, self.stagger = int(clients), order, float(stagger)
        self.partition = 0

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a module holding 16 zero buffers."""
        model = torch.nn.Module()
        for index in range(TENSORS):
            model.register_buffer(f"w{index}", torch.zeros(self.elements))
        return model

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        """Remember the partition (the client's id); the data is one unused example."""
        self.partition = partition
        x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
        return LocalData(train=TensorDataset(x, y), test=TensorDataset(x, y))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        """Add the partition to every weight in place, then wait for this client's turn."""
        for buffer in model.buffers():
            buffer.add_(float(self.partition))
        time.sleep(self.stagger * upload_rank(self.order, self.clients, self.partition))
        return TrainResult(examples=1, loss=0.0)

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        """A fixed evaluation; nothing is measured here."""
        return Evaluation(examples=1, loss=0.0, accuracy=0.0)


def upload_rank(order: str, clients: int, partition: int) -> int:
    """The place of ``partition`` among the uploads for ``order``."""
    if order == "natural":
        return partition
    if order == "reverse":
        return clients - 1 - partition
    if order == "shuffled":
        permutation = list(range(clients))
        random.Random(6).shuffle(permutation)
        return permutation.index(partition)
    raise ValueError(f"order must be natural, reverse or shuffled, not {order!r}")


def one_run(mib: int, clients: int, order: str, stagger: float, workdir: Path) -> dict:
    """One round with ``clients`` uploads arriving in ``order``; figures and the final model."""
    port = free_port()
    config = workdir / "job.toml"
    config.write_text(
        f'task = "bench.aggregation_bench:StaggeredTask"\n[task_options]\nmib = {mib}\n'
        f'clients = {clients}\norder = "{order}"\nstagger = {stagger}\n'
    )
    env = {"PYTHONPATH": str(REPO), "PATH": str(BIN), "FEDSILO_INSECURE": "1"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("MALLOC_")})
    server_err = workdir / "server.err"
    # fmt: off
    server_cmd = [
        "/usr/bin/time", "-f", "MAXRSS %M", str(BIN / "fl-server"),
        "--job-id", "1", "--port-base", str(port - 1), "--host", "127.0.0.1",
        "--config", str(config), "--rounds", "1", "--min-clients", str(clients),
        "--progress-timeout", "300", "--log-level", "debug", "--out", str(workdir / "run"),
    ]
    # fmt: on
    with server_err.open("wb") as serr:
        server = subprocess.Popen(server_cmd, stderr=serr, stdout=subprocess.DEVNULL, env=env)
        client_procs = []
        for index in range(clients):
            # Started one by one, each once the previous has joined, so ids follow names.
            err = (workdir / f"client{index}.err").open("wb")
            client_procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "fl-client"),
                        "--server",
                        f"127.0.0.1:{port}",
                        "--name",
                        f"c{index:02d}",
                        "--threads",
                        "1",
                        "--connect-timeout",
                        "120",
                        "--config",
                        str(config),  # the job's task: each client runs it by its own choice
                    ],
                    stderr=err,
                    stdout=subprocess.DEVNULL,
                    env=env,
                )
            )
            deadline = time.monotonic() + 120
            while not any(
                e["event"] == "client_joined" and e.get("client") == f"c{index:02d}"
                for e in events(server_err)
            ):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"client c{index:02d} did not join; see {workdir}")
                time.sleep(0.05)
        failed = server.wait(timeout=1800) != 0
        failed |= any(proc.wait(timeout=120) != 0 for proc in client_procs)
        if failed:
            raise RuntimeError(f"daemons failed; see {workdir}")
    log = events(server_err)
    arrival = [e["client_id"] for e in log if e["event"] == "update_received"]
    started = next(e for e in log if e["event"] == "round_started")
    done = next(e for e in log if e["event"] == "round_done")
    model = torch.load(workdir / "run" / "model.pt", weights_only=True)
    expected = sum(range(clients)) / clients
    assert all(torch.all(t == expected) for t in model.values()), "wrong aggregate"
    return {
        "server_peak_rss_mib": max_rss_mib(server_err),
        "arrival_order": arrival,
        "round_seconds": done["seconds"],
        "spilled_uploads": sum(
            1 for e in log if e["event"] == "upload_started" and e.get("spilled")
        ),
        "model": model,
        "started": started["timestamp"],
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--orders", default="natural,reverse")
    parser.add_argument("--stagger", type=float, default=0.6, help="seconds between uploads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    baseline = import_baseline_mib()
    report: dict[str, dict] = {}
    models = {}
    for order in args.orders.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            run = one_run(args.mib, args.clients, order, args.stagger, Path(tmp))
        models[order] = run.pop("model")
        run.pop("started")
        rss = run["server_peak_rss_mib"]
        run["rss_over_model"] = rss / args.mib
        run["rss_above_baseline_over_model"] = (rss - baseline) / args.mib
        report[order] = run
        print(
            f"{order:>9}: server peak RSS {rss:7.0f} MiB = {rss / args.mib:.2f} x model "
            f"({(rss - baseline) / args.mib:.2f} x above the {baseline:.0f} MiB baseline); "
            f"{run['spilled_uploads']} of {args.clients} uploads spilled; "
            f"round {run['round_seconds']:.1f} s; arrival {run['arrival_order']}"
        )
    first = next(iter(models.values()))
    identical = all(
        all(torch.equal(first[name], other[name]) for name in first) for other in models.values()
    )
    print(
        f"target (issue 6): <= 3 x model + 200 MiB = {3 * args.mib + 200} MiB; "
        f"aggregates bit-identical across orders: {identical}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"baseline_rss_mib": baseline, "runs": report, "identical": identical}, indent=2
            )
        )


if __name__ == "__main__":
    main()
