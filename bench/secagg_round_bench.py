"""Secure aggregation through the real daemons: rounds with and without, interleaved.

    python bench/secagg_round_bench.py [--which big,tiny] [--big-mib 256] [--rounds 3]
                                       [--repeats 2] [--json out.json]

Each repetition runs the plain job and then the same job with ``--secure-aggregation`` (uniform
weighting, the same model, the same clients), so that a shared machine's load falls on both:

- big: ``--big-mib`` (256) MiB x 4 ``fl-client`` processes;
- tiny: a 0.01 MiB model x 50 clients (threads of ``bench/many_clients.py``).

``bench.bench_task:NoopTask`` (seeded random weights; training does nothing), plaintext on
127.0.0.1: with ``--insecure`` the clients' round keys are not signed (the signature is one
P-256 ECDSA per client per round, microseconds; ``bench/secagg_bench.py`` times the key stages
with signing). Figures per job, rounds >= 2: ``round_done.seconds`` (the server's clock, from the
round's creation to its new model: with secure aggregation that includes the key stages, the
masked uploads and unmasking) and the bytes each way of ``metrics.jsonl`` (the model streams:
the key-stage messages are not in those counts; bench/secagg_bench.py sizes them). Ratios
(secure / plain) are taken within each repetition, then median [min, max].
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
from bench.round_bench import TINY_MIB, Case, JobFailedError, run_job

SECURE = ("--secure-aggregation", "--secagg-clip-norm", "1000", "--weighting", "uniform")
PLAIN = ("--weighting", "uniform")


def job_figures(case: Case, rounds: int, job_timeout: float) -> dict[str, float]:
    """One job: median seconds per round and mean bytes each way per round (rounds >= 2)."""
    with tempfile.TemporaryDirectory(prefix=f"{case.name}-") as tmp:
        run = run_job(case, rounds, Path(tmp), per_process=100, job_timeout=job_timeout)
    rows = run["rows"]
    return {
        "round_s": statistics.median(run["round_s"]),
        "bytes_up": statistics.mean(row["bytes_up"] for row in rows),
        "bytes_down": statistics.mean(row["bytes_down"] for row in rows),
        "server_peak_rss_mib": run["server_peak_rss_mib"],
        "client_peak_rss_mib": max(run["client_peak_rss_mib"]),
    }


def compare(name: str, mib: float, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """Plain and secure jobs of one case, interleaved; their figures and per-repetition ratios."""
    plain = Case(f"{name}-plain", mib, clients, server_args=PLAIN)
    secure = Case(f"{name}-secagg", mib, clients, server_args=SECURE)
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "secagg": []}
    for _ in range(args.repeats):
        runs["plain"].append(job_figures(plain, args.rounds, args.job_timeout))
        runs["secagg"].append(job_figures(secure, args.rounds, args.job_timeout))
    result: dict[str, Any] = {"model_mib": mib, "clients": clients}
    for mode, jobs in runs.items():
        result[mode] = {key: summary([job[key] for job in jobs]) for key in jobs[0]}
    pairs = list(zip(runs["plain"], runs["secagg"], strict=True))
    result["ratio"] = {
        key: summary([s[key] / p[key] for p, s in pairs])
        for key in ("round_s", "bytes_up", "bytes_down")
    }
    return result


def cell(figures: dict[str, float], digits: int = 2) -> str:
    """``median [min, max]``."""
    return (
        f"{figures['median']:.{digits}f} [{figures['min']:.{digits}f}, {figures['max']:.{digits}f}]"
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One Markdown row per case."""
    print(
        "| case | plain s/round | secure s/round | secure / plain, time | bytes up | bytes down |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {r['model_mib']:g} MiB x {r['clients']} ({name}) | {cell(r['plain']['round_s'])} | "
            f"{cell(r['secagg']['round_s'])} | {cell(r['ratio']['round_s'])} | "
            f"{cell(r['ratio']['bytes_up'], 4)} | {cell(r['ratio']['bytes_down'], 4)} |"
        )


def main() -> int:
    """Run the cases, print the table, write the JSON; 1 if a job failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", default="big,tiny", help="comma-separated: big, tiny")
    parser.add_argument("--big-mib", type=float, default=256.0)
    parser.add_argument("--tiny-clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per job (round 1 skipped)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs per case")
    parser.add_argument("--job-timeout", type=float, default=1200.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is warm-up)")
    which = {w.strip() for w in args.which.split(",") if w.strip()}
    if which - {"big", "tiny"}:
        parser.error(f"--which: unknown {sorted(which - {'big', 'tiny'})}")
    chosen = [("big", args.big_mib, 4), ("tiny", TINY_MIB, args.tiny_clients)]
    conditions = Conditions()
    results = {}
    for name, mib, clients in chosen:
        if name in which:
            try:
                results[name] = compare(name, mib, clients, args)
            except JobFailedError as failure:
                print(f"{name}: {failure}", file=sys.stderr)
                return 1
    conditions.end()
    print_table(results)
    print(f"{args.rounds} rounds per job, round 1 skipped; {args.repeats} interleaved pair(s)")
    print(conditions.line())
    write_report(args.json, {"conditions": conditions.as_dict(), "cases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
