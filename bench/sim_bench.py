"""Simulation speed (issue 16): fl-sim's backends and Flower 1.42's simulation engine, side by
side in one run, on the same workload and the same cores.

    .venv/bin/python bench/sim_bench.py [--cases fmnist-100,niid-10] [--repeats 2]
        [--variants sim-1,sim-2,sim-2-fixed,sim-ray,flower-1cpu,flower-default]
        [--flower-python PATH] [--json build/bench-sim.json]

Cases (simple-cnn on Fashion-MNIST, 1 local epoch, plain SGD):

- ``fmnist-100``: 100 clients (iid split, so every client has the same work and a round's
  cost does not depend on which 10 the samplers draw), 10 a round, batch 32, rate 0.1;
- ``niid-10``: NIID-Bench's setting: 10 clients, Dir(0.5) label skew, all of them every round,
  batch 64, rate 0.05 (docs/results.md); a few rounds only, for time.

Variants: fl-sim with 1, 2 and 4 local worker processes (``--threads 1`` each; 4 on 2 cores
shows what more hosts than cores do), 2 workers with ``--placement fixed`` (client i always in
worker i % 2, as before free placement: the balance of sampled rounds), fl-sim on Ray (2 actors
of 1 CPU, 1 thread each), and Flower's ``run_simulation`` (Ray backend) with 1 CPU
and 1 torch thread per client (2 at a time here, as fl-sim's 2 workers) and with its defaults
(2 CPUs per client, torch's threads). Flower runs in bench/.venv-flwr (made on first use; see
peers/flower_sim_bench.py; ``--flower-python`` names another venv's python that has
``flwr[simulation]==1.42.0``), on the very client splits fedsilo's task draws.

Seconds per round: fl-sim's ``round_done.seconds`` (metrics.jsonl ``seconds``: the round's
creation to the aggregated model), Flower's ``configure_fit`` to the end of ``aggregate_fit``.
Round 1 is skipped (warm-up: the first training in each process). Variants run interleaved,
repeat by repeat; the 1-minute load average is noted before and after each job (with
``--quiet-below``, each job first waits for it to drop below that). Ratios are taken within
each repetition (of that repetition's median round of each variant), then summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
VARIANTS = ("sim-1", "sim-2", "sim-2-fixed", "sim-4", "sim-ray", "flower-1cpu", "flower-default")
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
    workers = 2 if variant == "sim-ray" else int(variant.split("-")[1])
    fixed = variant.endswith("-fixed")
    if variant == "sim-ray":
        argv += ["--backend", "ray", "--workers", "2", "--ray-num-cpus", "1"]
    else:
        argv += ["--workers", str(workers), "--placement", "fixed" if fixed else "auto"]
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
    # Client i stays in worker i % workers with fixed placement (and on Ray); free placement
    # spreads the round's clients over idle workers: its bound is the work shared out evenly.
    spread = not fixed and variant != "sim-ray" and workers > 1
    return {
        "round_s": [float(r["seconds"]) for r in measured],
        "wall_s": wall,
        # The clients' own seconds (evaluate + train) per round, in all and on the busiest
        # worker: the round cannot end sooner.
        "work_s": [sum(c["train_seconds"] for c in r["clients"]) for r in measured],
        "busiest_worker_s": [
            balanced(r["clients"], workers) if spread else busiest(r["clients"], workers)
            for r in measured
        ],
    }


def balanced(clients: list[dict[str, Any]], workers: int) -> float:
    """The least the busiest worker can take in a round: an even share, or the longest client."""
    seconds = [client["train_seconds"] for client in clients]
    return max(sum(seconds) / workers, *seconds)


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
) -> dict[str, Any]:
    """All variants of one case, interleaved repeat by repeat; figures per variant, ratios."""
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
                job["load_before"], job["load_after"] = load, os.getloadavg()[0]
                collected[variant].append(job)
                print(
                    f"{name} {variant} #{repeat + 1}: rounds {job['round_s']} "
                    f"(wall {job['wall_s']:.1f} s, load {load:.2f} -> {job['load_after']:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
    by_variant = {variant: figures(jobs) for variant, jobs in collected.items()}
    return {"variants": by_variant, "ratios": repetition_ratios(collected, repeats)}


def repetition_ratios(collected: dict[str, list[dict[str, Any]]], repeats: int) -> dict[str, Any]:
    """Per repetition, each fl-sim variant's median round against the faster Flower's and
    against sim-1's of the same repetition; median [min, max] of those ratios."""
    medians = {
        variant: [statistics.median(job["round_s"]) for job in jobs]
        for variant, jobs in collected.items()
    }
    flowers = [v for v in medians if v.startswith("flower")]
    out: dict[str, Any] = {}
    for variant in (v for v in medians if v.startswith("sim")):
        own = medians[variant]
        if flowers:
            best = [min(medians[f][r] for f in flowers) for r in range(repeats)]
            out[f"flower/{variant}"] = summary([best[r] / own[r] for r in range(repeats)])
        if "sim-1" in medians and variant != "sim-1":
            one = medians["sim-1"]
            out[f"sim-1/{variant}"] = summary([one[r] / own[r] for r in range(repeats)])
    return out


def figures(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every per-round series of a variant's jobs; their loads."""
    out: dict[str, Any] = {"rounds_measured": sum(len(job["round_s"]) for job in jobs)}
    for key in ("round_s", "work_s", "busiest_worker_s", "client_setup_s"):
        if key in jobs[0]:
            out[key] = summary([s for job in jobs for s in job[key]])
    out["wall_s"] = [round(job["wall_s"], 2) for job in jobs]
    out["load"] = [f"{job['load_before']:.1f}-{job['load_after']:.1f}" for job in jobs]
    out["jobs"] = jobs
    return out


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The figures as Markdown rows, with fl-sim's speed-ups over Flower and over 1 worker
    (median [min, max] of the per-repetition ratios)."""
    lines = [
        "| case | variant | round_s median [min, max] | rounds | client work / round | "
        "busiest worker / round | load before-after each job | Flower (best) / this | "
        "sim-1 / this |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ratio(figure: dict[str, float] | None) -> str:
        if figure is None:
            return "-"
        return f"{figure['median']:.2f} x [{figure['min']:.2f}, {figure['max']:.2f}]"

    for name, result in results.items():
        for variant, f in result["variants"].items():
            s = f["round_s"]
            busiest = f"{f['busiest_worker_s']['median']:.3f}" if "busiest_worker_s" in f else "-"
            lines.append(
                f"| {name} | {variant} | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | "
                f"{f['rounds_measured']} | {f['work_s']['median']:.3f} | {busiest} | "
                f"{', '.join(f['load'])} | {ratio(result['ratios'].get(f'flower/{variant}'))} | "
                f"{ratio(result['ratios'].get(f'sim-1/{variant}'))} |"
            )
    return lines


def main() -> int:
    """Run the chosen cases and variants; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="jobs per variant and case")
    parser.add_argument(
        "--quiet-below",
        type=float,
        help="before each job, wait (at most 15 min) until the 1-minute load average is below",
    )
    parser.add_argument(
        "--flower-python",
        type=Path,
        help="a python with flwr[simulation]==1.42.0 (default: bench/.venv-flwr, made once)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    if set(cases) - set(CASES) or set(variants) - set(VARIANTS):
        parser.error(f"--cases from {sorted(CASES)}, --variants from {list(VARIANTS)}")
    if args.flower_python is not None and not args.flower_python.is_file():
        parser.error(f"--flower-python: {args.flower_python} is not a file")
    python = None
    if any(v.startswith("flower") for v in variants):
        python = args.flower_python or flower_sim_bench.ensure_venv()
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
