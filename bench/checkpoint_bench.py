"""Does a checkpoint being written slow the rounds it overlaps? Rounds of one job, side by side.

    python bench/checkpoint_bench.py [--mib 256,1024] [--rounds 8] [--repeats 2] [--json out.json]

One ``fl-server`` and one ``fl-client`` (``bench/transfer_bench.py``'s job: plaintext,
127.0.0.1, NoopTask's seeded random weights, no-op training) for ``--rounds`` rounds. The
server writes its checkpoint in the background, spaced by ten times its own write time, so in
one job some rounds run while a checkpoint is being written and the others do not: the same
process, the same memory and the same minutes, which is the fairest comparison there is.
A round's transfer is the server's ``round_started`` to its ``update_received`` (the model
down and the update up, decoded, checked and folded); it *overlaps* a checkpoint when the two
intervals intersect. Round 1 is left out (its upload lands in fresh memory). Per job: the
median transfer of each kind, and their ratio; then median [min, max] over the jobs. A job in
which every round, or none, overlapped gives no ratio and says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import Conditions, summary, write_report
from bench.transfer_bench import fedsilo_job


def split_rounds(job: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Transfer seconds of rounds >= 2 that overlap a checkpoint write, and of those that do not."""
    overlapped, clear = [], []
    for start, end in job["round_windows"][1:]:
        hit = any(begin < end and start < done for begin, done in job["checkpoint_windows"])
        (overlapped if hit else clear).append(end - start)
    return overlapped, clear


def one_size(mib: float, rounds: int, repeats: int) -> dict[str, Any]:
    """``repeats`` jobs of a ``mib`` model; the two kinds of round and their ratio per job."""
    jobs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix=f"ckpt-{mib:g}-") as tmp:
            job = fedsilo_job(mib, Path(tmp), rounds=rounds, timeout=1800)
        overlapped, clear = split_rounds(job)
        jobs.append(
            {
                "overlapped_s": overlapped,
                "clear_s": clear,
                "ratio": statistics.median(overlapped) / statistics.median(clear)
                if overlapped and clear
                else None,
                "checkpoint_s": [done - begin for begin, done in job["checkpoint_windows"]],
                "server_peak_rss_mib": job["server_peak_rss_mib"],
            }
        )
    ratios = [j["ratio"] for j in jobs if j["ratio"] is not None]
    return {
        "jobs": jobs,
        "overlapped_s": summary([s for j in jobs for s in j["overlapped_s"]] or [float("nan")]),
        "clear_s": summary([s for j in jobs for s in j["clear_s"]] or [float("nan")]),
        "ratio": summary(ratios) if ratios else None,
        "checkpoint_s": summary([s for j in jobs for s in j["checkpoint_s"]] or [float("nan")]),
    }


def main() -> int:
    """Run each size, print one line each, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", default="256,1024", help="comma-separated model sizes")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 is left out)")
    conditions = Conditions()
    results = {}
    for mib in (float(m) for m in args.mib.split(",") if m.strip()):
        results[f"{mib:g}"] = one_size(mib, args.rounds, args.repeats)
    conditions.end()
    print(
        "| model | rounds overlapping a checkpoint, s | other rounds, s | overlapped / other "
        "| checkpoint write, s |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        ratio = r["ratio"]
        shown = (
            f"{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]" if ratio else "n/a"
        )

        def cell(s: dict[str, float]) -> str:
            return f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"

        print(
            f"| {name} MiB | {cell(r['overlapped_s'])} | {cell(r['clear_s'])} | {shown} "
            f"| {cell(r['checkpoint_s'])} |"
        )
    print(f"{args.rounds} rounds per job, round 1 left out; {args.repeats} job(s) per size")
    print(conditions.line())
    write_report(args.json, {"conditions": conditions.as_dict(), "sizes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
