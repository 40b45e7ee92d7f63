"""Update compression: bytes up per client per round and final accuracy, per codec (issue 6).

Runs fl-sim in process (the server's own job loop, sessions and strategy, the client's own
protocol) once per codec and task, and reads the run folders' metrics.jsonl. Prints figures,
never passes or fails:

    .venv/bin/python bench/compression_bench.py --json build/bench-compression.json
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
from bench.harness import Conditions, add_sim_arguments, run_sim, write_report

# (label, codec, options): the codecs as a user would pick them.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("none", "none", {}),
    ("delta", "delta", {}),
    ("fp16", "fp16", {}),
    ("bf16", "bf16", {}),
    ("int8", "int8", {}),
    ("int8 per-channel", "int8", {"per_channel": True}),
    ("topk 0.1", "topk", {"topk_fraction": 0.1}),
    ("topk 0.01", "topk", {"topk_fraction": 0.01}),
]
# Per task: the settings of docs/results.md for fmnist, the defaults for synthetic.
TASKS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    "fmnist": {"batch_size": 64, "learning_rate": 0.05},
}


def run_one(
    task: str, codec: str, options: dict[str, Any], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Simulate one job; return its per-client byte counts, accuracy and time."""
    rows, seconds = run_sim(
        args, f"{task}/{codec}", out, task=task, compression=codec, **TASKS[task], **options
    )
    rounds = rows[1:]
    up = [r["bytes_up"] / len(r["participants"]) for r in rounds]
    down = [r["bytes_down"] / len(r["participants"]) for r in rounds]
    return {
        "bytes_up_per_client_round": statistics.mean(up),
        "bytes_down_per_client_round": statistics.mean(down),
        "final_accuracy": rows[-1]["eval_accuracy"],
        "accuracy_by_round": [r["eval_accuracy"] for r in rows],
        "seconds": round(seconds, 2),
    }


def main() -> int:
    """Run every codec on every task and print one table per task."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--codecs", nargs="+", default=[v[0] for v in VARIANTS])
    add_sim_arguments(parser, rounds=10)
    args = parser.parse_args()
    configure_logging("warning")
    conditions = Conditions()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            results[task] = {}
            print(f"\n{task}: {args.clients} clients, {args.rounds} rounds, seed {args.seed}")
            print("| codec | bytes up / client / round | vs none | final accuracy | seconds |")
            print("| --- | --- | --- | --- | --- |")
            for label, codec, options in VARIANTS:
                if label not in args.codecs:
                    continue
                out = Path(tmp) / f"{task}-{label.replace(' ', '-')}"
                figures = run_one(task, codec, options, args, out)
                results[task][label] = figures
                base = results[task].get("none", figures)["bytes_up_per_client_round"]
                ratio = figures["bytes_up_per_client_round"] / base
                print(
                    f"| {label} | {figures['bytes_up_per_client_round']:,.0f} | {ratio:.3f} | "
                    f"{figures['final_accuracy']:.4f} | {figures['seconds']:.1f} |",
                    flush=True,
                )
    print(conditions.end().line())
    if args.json is not None:
        payload = {
            "settings": vars(args) | {"json": str(args.json)},
            "results": results,
            "conditions": conditions.as_dict(),
        }
        write_report(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
