"""Secure aggregation rounds of two versions of fedsilo, interleaved: plain and secure of each.

    git archive COMMIT | tar -x -C /tmp/base        # the other version's files, no checkout
    python bench/secagg_ab.py --base /tmp/base [--repeats 4] [--rounds 4] [--json out.json]

Each repetition runs, in turn: the base version's plain job and secure job, then this
checkout's (256 MiB x 4 ``fl-client`` processes, ``bench.bench_task:NoopTask``, uniform weights,
plaintext; rounds >= 2 measured), so that a shared machine's drifting load falls on all four.
The base version's daemons import it through ``PYTHONPATH`` (a ``fedsilo`` link to ``--base``
in a temporary folder, found before this checkout's editable install). Per repetition: each
job's median ``round_done.seconds``, secure / plain within each version, and the jobs' CPU
seconds (``/usr/bin/time``); then median [min, max] of those over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import Conditions, summary
from bench.round_bench import Case, run_job
from bench.secagg_round_bench import PLAIN, SECURE, cell


def one_job(version: str, mode: str, mib: float, rounds: int) -> dict[str, Any]:
    """Run one job of ``version`` (its PYTHONPATH is already set); its figures."""
    args = SECURE if mode == "secure" else PLAIN
    with tempfile.TemporaryDirectory(prefix=f"ab-{version}-{mode}-") as tmp:
        run = run_job(
            Case(f"{version}-{mode}", mib, 4, server_args=args), rounds, Path(tmp), 100, 1200
        )
    return {
        "round_s": statistics.median(run["round_s"]),
        "server_cpu_s": run["server_cpu_s"],
        "clients_cpu_s": run["clients_cpu_s"],
    }


def main() -> int:
    """Run the repetitions, print one line per version, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other version's files")
    parser.add_argument("--mib", type=float, default=256.0)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per job (round 1 skipped)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.base / "common" / "secagg").is_dir() or args.rounds < 2:
        parser.error("--base must hold fedsilo's files (common/secagg/); --rounds at least 2")
    link_dir = Path(tempfile.mkdtemp(prefix="ab-base-"))
    (link_dir / "fedsilo").symlink_to(args.base.resolve())
    own = os.environ.get("PYTHONPATH", "")
    paths = {"base": str(link_dir), "this": own}
    conditions = Conditions()
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for version, path in paths.items():
            os.environ["PYTHONPATH"] = path
            for mode in ("plain", "secure"):
                figures = one_job(version, mode, args.mib, args.rounds)
                runs.append({"repeat": repeat, "version": version, "mode": mode, **figures})
                print(json.dumps(runs[-1]), flush=True)
    os.environ["PYTHONPATH"] = own
    conditions.end()
    result: dict[str, Any] = {"conditions": conditions.as_dict(), "runs": runs}
    for version in paths:
        pairs = [
            tuple(r for r in runs if r["repeat"] == i and r["version"] == version)
            for i in range(args.repeats)
        ]
        ratios = [s["round_s"] / p["round_s"] for p, s in pairs]
        result[version] = {"ratio": summary(ratios), "ratios": ratios}
        print(
            f"{version}: secure / plain {cell(summary(ratios))}, per repetition "
            f"{[round(r, 2) for r in ratios]}"
        )
    print(conditions.line())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
