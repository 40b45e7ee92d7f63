"""Update compression: bytes up per client per round and final accuracy, per codec (issue 6).

Runs fl-sim in process (the server's own job loop, sessions and strategy, the client's own
protocol) once per codec and task, and reads the run folders' metrics.jsonl. Prints figures,
never passes or fails:

    .venv/bin/python bench/compression_bench.py --json build/bench-compression.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedsilo.common.logging import configure_logging
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import Conditions

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
    config = SimConfig(
        task=task,
        clients=args.clients,
        rounds=args.rounds,
        seed=args.seed,
        threads=args.threads,
        out=out,
        compression=codec,  # type: ignore[arg-type]
        log_level="warning",
        **TASKS[task],
        **options,
    )
    started = time.monotonic()
    result = simulate(config)
    seconds = time.monotonic() - started
    if not result.outcome.finished:
        raise SystemExit(f"{task}/{codec}: the job aborted: {result.outcome.reason}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
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
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": vars(args) | {"json": str(args.json)},
            "results": results,
            "conditions": conditions.as_dict(),
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
