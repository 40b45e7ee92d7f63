"""Simulation speed (issue 16): fl-sim's backends and Flower 1.42's simulation engine, side by
side in one run, on the same workload and the same cores.

    .venv/bin/python bench/sim_bench.py [--cases fmnist-100,niid-10] [--repeats 2]
        [--variants sim-1,sim-2,sim-ray,flower-1cpu,flower-default] [--json build/bench-sim.json]

Cases (simple-cnn on Fashion-MNIST, 1 local epoch, plain SGD):

- ``fmnist-100``: 100 clients (iid split, so every client has the same work and a round's
  cost does not depend on which 10 the samplers draw), 10 a round, batch 32, rate 0.1;
- ``niid-10``: NIID-Bench's setting: 10 clients, Dir(0.5) label skew, all of them every round,
  batch 64, rate 0.05 (docs/results.md); a few rounds only, for time.

Variants: fl-sim with 1, 2 and 4 local worker processes (``--threads 1`` each; 4 on 2 cores
shows what more hosts than cores do to the balance of sampled rounds), fl-sim on Ray (2 actors
of 1 CPU, 1 thread each), and Flower's ``run_simulation`` (Ray backend) with 1 CPU
and 1 torch thread per client (2 at a time here, as fl-sim's 2 workers) and with its defaults
(2 CPUs per client, torch's threads). Flower runs in bench/.venv-flwr (made on first use; see
peers/flower_sim_bench.py), on the very client splits fedsilo's task draws.

Seconds per round: fl-sim's ``round_done.seconds`` (metrics.jsonl ``seconds``: the round's
creation to the aggregated model), Flower's ``configure_fit`` to the end of ``aggregate_fit``.
Round 1 is skipped (warm-up: the first training in each process). Variants run interleaved,
repeat by repeat; the 1-minute load average is noted before each job (with ``--quiet-below``,
each job first waits for it to drop below that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import BIN, REPO, summary
from bench.peers import flower_sim_bench

CASES: dict[str, dict[str, Any]] = {
    "fmnist-100": {
        "clients": 100,
        "per_round": 10,
        "rounds": 11,
        "batch_size": 32,
        "learning_rate": 0.1,
        "partition": "iid",
    },
    "niid-10": {
        "clients": 10,
        "per_round": 10,
        "rounds": 4,
        "batch_size": 64,
        "learning_rate": 0.05,
        "partition": "dirichlet",
    },
}
VARIANTS = ("sim-1", "sim-2", "sim-4", "sim-ray", "flower-1cpu", "flower-default")
QUIET_WAIT = 900.0  # the longest wait for a quiet box before a job (then it runs anyway)
SEED = 0
JOB_TIMEOUT = 3600.0


def write_partitions(case: dict[str, Any], path: Path) -> None:
    """Write each client's training and held-out indices as fedsilo's fmnist task draws them."""
    import numpy as np

    from fedsilo.common.seeding import derive_seed
    from fedsilo.tasks.builtin.fmnist import FashionMnistTask
    from fedsilo.tasks.datasets.fmnist import DEFAULT_DIR, load_fashion_mnist

    task = FashionMnistTask(clients=case["clients"], partition=case["partition"])
    _, labels = load_fashion_mnist("train", DEFAULT_DIR)
    arrays = {}
    for partition in range(case["clients"]):
        train, test = task.split.client_split(labels, partition, derive_seed(SEED, "fmnist"))
        arrays[f"train{partition}"] = np.asarray(train, dtype=np.int64)
        arrays[f"test{partition}"] = np.asarray(test, dtype=np.int64)
    np.savez(path, **arrays)


def sim_job(case: dict[str, Any], variant: str, workdir: Path) -> dict[str, Any]:
    """One fl-sim run; return its measured rounds' seconds and the whole run's wall clock."""
    options = workdir / "sim.toml"
    options.write_text(
        f'[task_options]\nclients = {case["clients"]}\npartition = "{case["partition"]}"\n'
    )
    argv = [str(BIN / "fl-sim"), "--config", str(options), "--task", "fmnist"]
    argv += ["--clients", str(case["clients"]), "--clients-per-round", str(case["per_round"])]
    argv += ["--rounds", str(case["rounds"]), "--local-epochs", "1", "--seed", str(SEED)]
    argv += ["--batch-size", str(case["batch_size"]), "--lr", str(case["learning_rate"])]
    argv += ["--threads", "1", "--out", str(workdir / "run")]
    if variant == "sim-ray":
        argv += ["--backend", "ray", "--workers", "2", "--ray-num-cpus", "1"]
    else:
        argv += ["--workers", variant.removeprefix("sim-")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env, check=False
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").open()]
    measured = [r for r in rows if r.get("round", 0) >= 2 and "seconds" in r]
    workers = 2 if variant == "sim-ray" else int(variant.removeprefix("sim-"))
    return {
        "round_s": [float(r["seconds"]) for r in measured],
        "wall_s": wall,
        # The clients' own seconds (evaluate + train) per round, in all and on the busiest
        # worker (client i is hosted by worker i % workers): the round cannot end sooner.
        "work_s": [sum(c["train_seconds"] for c in r["clients"]) for r in measured],
        "busiest_worker_s": [busiest(r["clients"], workers) for r in measured],
    }


def busiest(clients: list[dict[str, Any]], workers: int) -> float:
    """The summed client seconds of the most loaded worker in one round."""
    loads = [0.0] * workers
    for client in clients:
        loads[client["client_id"] % workers] += client["train_seconds"]
    return max(loads)


def flower_job(
    python: Path, case: dict[str, Any], variant: str, partitions: Path, workdir: Path
) -> dict[str, Any]:
    """One Flower simulation; return its measured rounds' seconds and its wall clock."""
    argv = [str(python), str(REPO / "bench" / "peers" / "flower_sim_bench.py")]
    argv += ["--partitions", str(partitions), "--clients", str(case["clients"])]
    argv += ["--per-round", str(case["per_round"]), "--rounds", str(case["rounds"])]
    argv += ["--batch-size", str(case["batch_size"])]
    argv += ["--learning-rate", str(case["learning_rate"])]
    trace = workdir / "trace"
    trace.mkdir()
    argv += ["--trace", str(trace)]
    if variant == "flower-1cpu":
        argv += ["--client-cpus", "1", "--threads", "1"]
    else:  # Flower's default client resources: 2 CPUs, torch's own thread count
        argv += ["--client-cpus", "2"]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
    log = workdir / "flower.err"
    started = time.monotonic()
    with log.open("w") as err:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=JOB_TIMEOUT, env=env,
            check=False, cwd=workdir,
        )  # fmt: skip
    wall = time.monotonic() - started
    lines = [json.loads(raw) for raw in done.stdout.splitlines() if raw.startswith("{")]
    if done.returncode != 0 or len(lines) != case["rounds"] or any(x["failures"] for x in lines):
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{variant} failed ({done.returncode}):\n{tail}")
    seconds = [float(x["seconds"]) for x in lines if x["round"] >= 2]
    fits = [json.loads(line) for path in trace.glob("*.jsonl") for line in path.open()]
    rounds = range(2, case["rounds"] + 1)
    return {
        "round_s": seconds,
        "wall_s": wall,
        # Per round: the fits' seconds (receiving the model, evaluating, training), and what
        # building each client (its data, its model) cost on top; and how many processes ran.
        "work_s": [
            sum(f["done"] - f["fit_started"] for f in fits if f["round"] == r) for r in rounds
        ],
        "client_setup_s": [
            sum(f["fit_started"] - f["created"] for f in fits if f["round"] == r) for r in rounds
        ],
        "processes": len({f["pid"] for f in fits}),
    }


def wait_for_quiet(below: float | None) -> float:
    """Wait (bounded) until the 1-minute load average is under ``below``; return it."""
    deadline = time.monotonic() + QUIET_WAIT
    while below is not None and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)  # the load average itself moves only every 5 s
    return os.getloadavg()[0]


def run_case(
    name: str, variants: list[str], repeats: int, python: Path | None, quiet_below: float | None
) -> dict[str, dict[str, Any]]:
    """All variants of one case, interleaved repeat by repeat; figures per variant."""
    case = CASES[name]
    collected: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix=f"sim-bench-{name}-") as tmp:
        partitions = Path(tmp) / "partitions.npz"
        write_partitions(case, partitions)
        for repeat in range(repeats):
            for variant in variants:
                workdir = Path(tmp) / f"{variant}-{repeat}"
                workdir.mkdir()
                load = wait_for_quiet(quiet_below)
                if variant.startswith("flower"):
                    assert python is not None
                    job = flower_job(python, case, variant, partitions, workdir)
                else:
                    job = sim_job(case, variant, workdir)
                job["load_before"] = load
                collected[variant].append(job)
                print(
                    f"{name} {variant} #{repeat + 1}: rounds {job['round_s']} "
                    f"(wall {job['wall_s']:.1f} s, load {load:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
    return {variant: figures(jobs) for variant, jobs in collected.items()}


def figures(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every per-round series of a variant's jobs; their loads."""
    out: dict[str, Any] = {"rounds_measured": sum(len(job["round_s"]) for job in jobs)}
    for key in ("round_s", "work_s", "busiest_worker_s", "client_setup_s"):
        if key in jobs[0]:
            out[key] = summary([s for job in jobs for s in job[key]])
    out["wall_s"] = [round(job["wall_s"], 2) for job in jobs]
    out["load_before"] = [round(job["load_before"], 2) for job in jobs]
    out["jobs"] = jobs
    return out


def table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The figures as Markdown rows, with fl-sim's speed-ups over Flower and over 1 worker."""
    lines = [
        "| case | variant | round_s median [min, max] | rounds | client work / round | "
        "busiest worker / round | load before each job | Flower (best) / this | vs sim-1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_variant in results.items():
        flowers = [f["round_s"]["median"] for v, f in by_variant.items() if v.startswith("flower")]
        best_flower = min(flowers) if flowers else None
        one = by_variant.get("sim-1", {}).get("round_s", {}).get("median")
        for variant, f in by_variant.items():
            s = f["round_s"]
            ratio = f"{best_flower / s['median']:.2f} x" if best_flower else "-"
            speedup = f"{one / s['median']:.2f} x" if one else "-"
            busiest = f"{f['busiest_worker_s']['median']:.3f}" if "busiest_worker_s" in f else "-"
            lines.append(
                f"| {name} | {variant} | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | "
                f"{f['rounds_measured']} | {f['work_s']['median']:.3f} | {busiest} | "
                f"{', '.join(map(str, f['load_before']))} | {ratio} | {speedup} |"
            )
    return lines


def main() -> int:
    """Run the chosen cases and variants; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2, help="jobs per variant and case")
    parser.add_argument(
        "--quiet-below",
        type=float,
        help="before each job, wait (at most 15 min) until the 1-minute load average is below",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    if set(cases) - set(CASES) or set(variants) - set(VARIANTS):
        parser.error(f"--cases from {sorted(CASES)}, --variants from {list(VARIANTS)}")
    python = (
        flower_sim_bench.ensure_venv() if any(v.startswith("flower") for v in variants) else None
    )
    results = {
        name: run_case(name, variants, args.repeats, python, args.quiet_below) for name in cases
    }
    print("\n".join(table(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"cpus": os.cpu_count(), "seed": SEED, "cases": CASES, "results": results}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
