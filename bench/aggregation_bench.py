"""Benchmark 5 of issue 6: FedAvg over 16 uploads of a 256 MiB model; the server's peak memory.

    python bench/aggregation_bench.py [--clients 16] [--mib 256] [--repeats 3]
                                      [--orders natural,reverse,shuffled] [--json out.json]

One round through the real daemons (plaintext on 127.0.0.1): fl-server and one fl-client
process per client. The task (``StaggeredTask`` below) makes client ``p``'s update its model
plus ``p`` and holds each client back before it uploads, so that the uploads reach the server
in the order asked for: ``natural`` (client ids ascending, the order they are folded in),
``reverse`` (every upload but the last arrives before its turn and must wait: the server spills
it to disk) or ``shuffled`` (a seeded permutation). Peak RSS from /usr/bin/time; the baseline
is the RSS of a process that only imports the server (Python, torch, grpc), measured in the
same run. The model is seeded random values (zeros only as a labelled comparison,
``--payload zeros``). The orders run interleaved, ``--repeats`` times (natural, reverse,
shuffled, natural, ...), each run's figures printed as it ends, with the machine's load at the
start and end. Each run checks the aggregate: the model plus the mean of the client ids, to
float32 rounding, and the same bits in every order and repetition.
"""

from __future__ import annotations

import argparse
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
from bench.bench_task import random_payload
from bench.harness import (
    BIN,
    REPO,
    Conditions,
    events,
    free_port,
    import_baseline_mib,
    interleave,
    max_rss_mib,
    summary,
    write_report,
)

MIB = 1 << 20
TENSORS = 16


class StaggeredTask:
    """A ``mib`` MiB model in 16 float32 tensors; client p's update is the model plus p.

    Client p waits ``stagger`` seconds times its place in ``order`` before it uploads.
    """

    def __init__(
        self,
        mib: float = 256,
        clients: int = 16,
        order: str = "natural",
        stagger: float = 0.0,
        payload: str = "random",
    ) -> None:
        self.elements = int(mib * MIB) // 4 // TENSORS
        self.clients, self.order, self.stagger = int(clients), order, float(stagger)
        self.payload = payload
        self.partition = 0

    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a module holding 16 buffers of seeded random values (or zeros)."""
        model = torch.nn.Module()
        for index in range(TENSORS):
            if self.payload == "zeros":
                values = torch.zeros(self.elements)
            else:
                values = random_payload(self.elements, seed * TENSORS + index)
            model.register_buffer(f"w{index}", values)
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


def one_run(task: StaggeredTask, mib: int, order: str, workdir: Path) -> dict:
    """One round with the task's uploads arriving in ``order``; figures and the final model."""
    clients, stagger = task.clients, task.stagger
    port = free_port()
    config = workdir / "job.toml"
    config.write_text(
        f'task = "bench.aggregation_bench:StaggeredTask"\n[task_options]\nmib = {mib}\n'
        f'clients = {clients}\norder = "{order}"\nstagger = {stagger}\n'
        f'payload = "{task.payload}"\n'
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
    check_aggregate(task, model)
    return {
        "server_peak_rss_mib": max_rss_mib(server_err),
        "arrival_order": arrival,
        "round_seconds": done["seconds"],
        "spilled_uploads": sum(
            1 for e in log if e["event"] == "upload_started" and e.get("placement") == "spilled"
        ),
        "model": model,
        "started": started["timestamp"],
    }


def check_aggregate(task: StaggeredTask, model: dict[str, torch.Tensor]) -> None:
    """The FedAvg of 'model + p' over the clients is the model + mean(p), to rounding."""
    shift = sum(range(task.clients)) / task.clients
    base = task.build_model(seed=0).state_dict()  # the server's seed: the job's default, 0
    for name, tensor in model.items():
        expected = base[name] + shift
        if task.payload == "zeros":  # small integers and halves: exact in float32
            assert torch.equal(tensor, expected), f"wrong aggregate in {name}"
        else:
            assert torch.allclose(tensor, expected, rtol=0, atol=1e-5), f"wrong aggregate {name}"


def main() -> None:
    """Run every order, interleaved, ``--repeats`` times; print and write the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--orders", default="natural,reverse,shuffled")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stagger", type=float, default=0.6, help="seconds between uploads")
    parser.add_argument("--payload", choices=["random", "zeros"], default="random")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conditions = Conditions()
    baseline = import_baseline_mib()
    target = 3 * args.mib + 200  # above the baseline (issue 12)
    reference: dict[str, torch.Tensor] = {}

    def trial(order: str) -> dict:
        task = StaggeredTask(args.mib, args.clients, order, args.stagger, args.payload)
        with tempfile.TemporaryDirectory() as tmp:
            run = one_run(task, args.mib, order, Path(tmp))
        model = run.pop("model")
        if not reference:
            reference.update(model)
        run["identical"] = all(torch.equal(reference[name], model[name]) for name in reference)
        run.pop("started")
        rss = run["server_peak_rss_mib"]
        run["above_baseline_mib"] = rss - baseline
        run["within_target"] = rss - baseline <= target
        print(
            f"{order:>9}: server peak RSS {rss:7.0f} MiB = {rss / args.mib:.2f} x model, "
            f"{rss - baseline:.0f} MiB above the {baseline:.0f} MiB baseline "
            f"(target {target}: {'met' if run['within_target'] else 'OVER'}); "
            f"{run['spilled_uploads']} of {args.clients} spilled; round "
            f"{run['round_seconds']:.1f} s; same bits: {run['identical']}",
            flush=True,
        )
        return run

    orders = [order.strip() for order in args.orders.split(",") if order.strip()]
    repetitions = interleave([(order, lambda o=order: trial(o)) for order in orders], args.repeats)
    conditions.end()
    report = {
        "model_mib": args.mib,
        "payload": args.payload,
        "baseline_rss_mib": baseline,
        "target_above_baseline_mib": target,
        "orders": {
            order: {
                "server_peak_rss_mib": summary(
                    [r[order]["server_peak_rss_mib"] for r in repetitions]
                ),
                "every_run_within_target": all(r[order]["within_target"] for r in repetitions),
            }
            for order in orders
        },
        "identical": all(r[o]["identical"] for r in repetitions for o in orders),
        "repetitions": repetitions,
        "conditions": conditions.as_dict(),
    }
    label = "" if args.payload == "random" else " ZERO-FILLED model: comparison only."
    for order, figures in report["orders"].items():
        rss = figures["server_peak_rss_mib"]
        print(
            f"{order:>9}: peak RSS median {rss['median']:.0f} MiB [{rss['min']:.0f}, "
            f"{rss['max']:.0f}] over {args.repeats}; every run within target: "
            f"{figures['every_run_within_target']}"
        )
    print(f"aggregates bit-identical across orders and repetitions: {report['identical']}.{label}")
    print(conditions.line())
    write_report(args.json, report)


if __name__ == "__main__":
    main()
