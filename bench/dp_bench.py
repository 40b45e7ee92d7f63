"""Record-level DP-SGD: accuracy, epsilon, bytes and seconds per round, per budget (issue 13).

Runs fl-sim in process (the server's own job loop, the clients' own protocol, each silo's own
DP-SGD budget) once per variant and reads the run folder's metrics.jsonl. Prints a Markdown
table (the one in docs/privacy.md) and never passes or fails:

    .venv/bin/python bench/dp_bench.py --json build/bench-dp.json      # make bench-dp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedsilo.common.logging import configure_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import add_sim_arguments, run_sim, write_report

# Secure aggregation's settings: updates clipped to this L2 norm, weights up to the largest
# fmnist silo (about 7,000 records of 48,000 under Dirichlet(0.5) with 10 silos).
SECAGG: dict[str, Any] = {
    "secure_aggregation": True,
    "secagg_clip_norm": 20.0,
    "secagg_max_weight": 60_000,
}
# (label, settings): no DP, then each silo's record-level budget; the same under secure
# aggregation.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("no DP", {}),
    ("epsilon 8", {"record_dp_epsilon": 8.0}),
    ("epsilon 3", {"record_dp_epsilon": 3.0}),
    ("epsilon 1", {"record_dp_epsilon": 1.0}),
    ("no DP + secagg", SECAGG),
    ("epsilon 8 + secagg", {"record_dp_epsilon": 8.0, **SECAGG}),
    ("epsilon 3 + secagg", {"record_dp_epsilon": 3.0, **SECAGG}),
    ("epsilon 1 + secagg", {"record_dp_epsilon": 1.0, **SECAGG}),
]
# Per task: docs/results.md's settings for fmnist; small ones for a quick run on synthetic.
TASKS: dict[str, dict[str, Any]] = {
    # lr 0.5: per-sample clipping to C = 1 shrinks DP-SGD's steps; plain SGD trains well at it too
    "fmnist": {"task_options": {"clients": 10}, "batch_size": 64, "learning_rate": 0.5},
    "synthetic": {"task_options": {"max_samples": 60}, "batch_size": 16},
}


def run_one(
    task: str, settings: dict[str, Any], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Simulate one job; return accuracy, the silos' epsilon, bytes and seconds per round."""
    rows, seconds = run_sim(
        args,
        task,
        out,
        task=task,
        **(TASKS[task] | ({"learning_rate": args.lr} if args.lr else {})),
        **settings,
    )
    rounds = rows[1:]
    epsilons = [c["dp_epsilon"] for c in rounds[-1]["clients"] if "dp_epsilon" in c]
    return {
        "central_accuracy": rows[-1].get("central_accuracy"),
        "eval_accuracy": rows[-1]["eval_accuracy"],
        "accuracy_by_round": [r.get("central_accuracy", r.get("eval_accuracy")) for r in rows],
        "max_epsilon": max(epsilons) if epsilons else None,
        "clients_last_round": len(rounds[-1]["participants"]),
        "dropped": sum(len(r["dropped"]) for r in rounds),
        "bytes_per_round": statistics.mean(r["bytes_down"] + r["bytes_up"] for r in rounds),
        "seconds_per_round": statistics.mean(r["seconds"] for r in rounds),
        "seconds": round(seconds, 2),
    }


def _row(label: str, figures: dict[str, Any]) -> str:
    accuracy = figures["central_accuracy"]
    shown = accuracy if accuracy is not None else figures["eval_accuracy"]
    epsilon = figures["max_epsilon"]
    return (
        f"| {label} | {shown:.4f} | {'-' if epsilon is None else f'{epsilon:.3f}'} | "
        f"{figures['clients_last_round']} | {figures['bytes_per_round'] / 1e6:.2f} | "
        f"{figures['seconds_per_round']:.2f} |"
    )


def main() -> int:
    """Run every variant and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fmnist", choices=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    add_sim_arguments(parser, rounds=5)
    parser.add_argument(
        "--lr", type=float, help="learning rate of every variant (default: the task's)"
    )
    args = parser.parse_args()
    unknown = set(args.variants) - {label for label, _ in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    configure_logging("warning")
    results: dict[str, dict[str, Any]] = {}
    lr = args.lr or TASKS[args.task].get("learning_rate")
    print(f"{args.task}: {args.clients} silos, {args.rounds} rounds, lr {lr}, seed {args.seed}")
    print("| variant | accuracy | max silo epsilon | silos at the end | MB / round | s / round |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in VARIANTS:
            if label not in args.variants:
                continue
            out = Path(tmp) / label.replace(" ", "-").replace("+", "")
            results[label] = run_one(args.task, settings, args, out)
            print(_row(label, results[label]), flush=True)
    if args.json is not None:
        write_report(
            args.json, {"settings": vars(args) | {"json": str(args.json)}, "results": results}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
