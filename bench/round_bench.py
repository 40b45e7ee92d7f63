"""Benchmarks 3 and 4 of issue 6: seconds per round through the real daemons, no-op training.

    python bench/round_bench.py [--which big,many] [--counts 10,100,1000] [--rounds 6]
                                [--repeats 1] [--big-mib 256] [--json out.json]

Starts ``fl-server`` (plaintext, 127.0.0.1) with ``bench.bench_task:NoopTask``, whose training
and evaluation do nothing, and its clients; every figure is framework overhead.

- big: a ``--big-mib`` (256) MiB model, two ``fl-client`` processes.
- many: a 0.01 MiB model and each of ``--counts`` clients: up to 10 as ``fl-client`` processes,
  more as ``bench/many_clients.py`` processes of at most ``--per-process`` (100) client
  threads (250 a process measured twice as slow at 1,000: GIL and thread contention).

The server waits for all clients (``--start-clients N --min-clients N``) before round 1. From
its JSON log, per round r >= 2 (round 1 is warm-up):

- round_s: ``round_done.seconds``, the server's own clock: from the round's creation (before
  the model goes to any stream) until the new global model is aggregated; it excludes writing
  the checkpoint and model.pt.
- cycle_s: ``round_done`` of r-1 to ``round_done`` of r (log timestamps): the whole period,
  with serializing the model for each round, waiting for idle clients, and the file writes.

Peak RSS of every process comes from /usr/bin/time. Figures are median, min and max over the
measured rounds of all repeats; nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    BIN,
    REPO,
    Conditions,
    events,
    free_port,
    max_rss_mib,
    stamp,
    stop,
    summary,
    write_report,
)

TASK = "bench.bench_task:NoopTask"
TINY_MIB = 0.01
# Clients log warnings only; FEDSILO_BENCH_CLIENT_LOG=debug shows each model_received, for
# timelines with --keep.
CLIENT_LOG_LEVEL = os.environ.get("FEDSILO_BENCH_CLIENT_LOG", "warning")
PAYLOADS = ("random", "zeros")  # NoopTask's; not imported: torch stays out of this process
PROCESS_CLIENTS_UP_TO = 10  # larger counts run as threads in bench/many_clients.py


class JobFailedError(RuntimeError):
    """A job that did not finish; the message holds the evidence."""


@dataclass(frozen=True)
class Case:
    """One benchmark job: a model size, a client count and the model's payload."""

    name: str
    model_mib: float
    clients: int
    payload: str = "random"
    server_args: tuple[str, ...] = ()  # more fl-server flags (e.g. --secure-aggregation)


def daemon_env() -> dict[str, str]:
    """Our environment with the repository root importable (for ``bench.bench_task``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def client_commands(
    case: Case, port: int, per_process: int, config: Path
) -> list[tuple[str, list[str]]]:
    """The client processes of ``case``: (label, argv) each; ``config`` names the job's task."""
    address = f"127.0.0.1:{port}"
    if case.clients <= PROCESS_CLIENTS_UP_TO:
        return [
            (
                f"c{index}",
                [
                    str(BIN / "fl-client"),
                    "--insecure",
                    "--server",
                    address,
                    "--name",
                    f"c{index}",
                    "--threads",
                    "1",
                    "--connect-timeout",
                    "120",
                    "--log-level",
                    CLIENT_LOG_LEVEL,
                    "--config",
                    str(config),  # task and task_options: each client runs the job's task
                ],
            )
            for index in range(case.clients)
        ]
    processes = math.ceil(case.clients / per_process)
    sizes = [case.clients // processes + (i < case.clients % processes) for i in range(processes)]
    return [
        (
            f"p{index}",
            [
                str(BIN / "python"),
                str(REPO / "bench" / "many_clients.py"),
                "--server",
                address,
                "--count",
                str(size),
                "--prefix",
                f"p{index}-",
                "--connect-timeout",
                "300",
                "--log-level",
                CLIENT_LOG_LEVEL,
                "--config",
                str(config),
            ],
        )
        for index, size in enumerate(sizes)
    ]


def evidence(server_err: Path, client_errs: list[Path]) -> str:
    """What the logs say about a failed job: event counts, warnings, errors, client summaries."""
    lines = []
    server_events = events(server_err)
    counts = Counter(e["event"] for e in server_events)
    lines.append("server events: " + json.dumps(dict(counts)))
    for event in server_events:
        if event.get("level") in ("warning", "error") and event["event"] != "insecure_transport":
            lines.append("server: " + json.dumps(event)[:600])
    for event in server_events[-3:]:
        lines.append("server, last: " + json.dumps(event)[:300])
    plain = [raw for raw in server_err.read_text().splitlines() if not raw.startswith("{")]
    lines.extend("server stderr: " + raw[:600] for raw in plain[-10:])
    for path in client_errs:
        tail = path.read_text().splitlines()[-5:]
        lines.extend(f"{path.stem}: {raw[:600]}" for raw in tail)
    return "\n".join(lines[:80])


def cpu_seconds(path: Path) -> float:
    """User + system CPU seconds of the process, from the 'CPU <user> <sys>' line of time."""
    found = re.findall(r"CPU ([0-9.]+) ([0-9.]+)$", path.read_text(), flags=re.MULTILINE)
    if not found:
        raise RuntimeError(f"no CPU line in {path}")
    return float(found[-1][0]) + float(found[-1][1])


def run_job(
    case: Case, rounds: int, workdir: Path, per_process: int, job_timeout: float
) -> dict[str, Any]:
    """Run one job of ``case``; return per-round seconds (rounds >= 2) and peak RSS figures."""
    port = free_port()
    config = workdir / "job.toml"
    config.write_text(
        f'task = "{TASK}"\n[task_options]\nmodel_mib = {case.model_mib}\n'
        f'payload = "{case.payload}"\n'
    )
    timing = ["/usr/bin/time", "-f", "CPU %U %S\nMAXRSS %M"]
    join_timeout = 60 + 0.3 * case.clients
    env = daemon_env()
    server_err = workdir / "server.err"
    server_cmd = [
        *timing,
        str(BIN / "fl-server"),
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port-base",
        str(port),
        "--job-id",
        "0",
        "--config",
        str(config),
        "--rounds",
        str(rounds),
        "--min-clients",
        str(case.clients),
        "--start-clients",
        str(case.clients),
        "--join-timeout",
        f"{join_timeout:g}",
        "--out",
        str(workdir / "run"),
        "--log-level",
        "info",
        *case.server_args,
    ]
    processes: list[subprocess.Popen[bytes]] = []
    client_errs: list[Path] = []
    try:
        with server_err.open("wb") as err:
            server = subprocess.Popen(
                server_cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        processes.append(server)
        for label, argv in client_commands(case, port, per_process, config):
            path = workdir / f"{label}.err"
            client_errs.append(path)
            with path.open("wb") as err:
                processes.append(
                    subprocess.Popen(
                        [*timing, *argv],
                        stdout=err,
                        stderr=err,
                        env=env,
                        cwd=workdir,
                        start_new_session=True,
                    )
                )
        try:
            code = server.wait(timeout=job_timeout)
        except subprocess.TimeoutExpired:
            raise JobFailedError(
                f"{case.name}: server still running after {job_timeout:g}s\n"
                + evidence(server_err, client_errs)
            ) from None
        deadline = time.monotonic() + min(60.0, job_timeout)  # clients end after the server
        client_codes = []
        for process in processes[1:]:
            try:
                client_codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                client_codes.append(-999)
        if code != 0 or any(c != 0 for c in client_codes):
            raise JobFailedError(
                f"{case.name}: server exited {code}, clients {client_codes}\n"
                + evidence(server_err, client_errs)
            )
    finally:
        for process in processes:
            stop(process)
    log = events(server_err)
    started = {e["round"]: stamp(e) for e in log if e["event"] == "round_started"}
    done = {e["round"]: e for e in log if e["event"] == "round_done"}
    listening = next(stamp(e) for e in log if e["event"] == "server_listening")
    measured = range(2, rounds + 1)
    return {
        "round_s": [float(done[r]["seconds"]) for r in measured],
        "cycle_s": [stamp(done[r]) - stamp(done[r - 1]) for r in measured],
        "join_s": started[1] - listening,
        "server_peak_rss_mib": max_rss_mib(server_err),
        "client_peak_rss_mib": [max_rss_mib(path) for path in client_errs],
        "client_processes": len(client_errs),
        "server_cpu_s": cpu_seconds(server_err),
        "clients_cpu_s": sum(cpu_seconds(path) for path in client_errs),
        "job_s": stamp(log[-1]) - listening,
        "rows": metrics_rows(workdir / "run" / "metrics.jsonl", measured),
    }


def metrics_rows(path: Path, rounds: range) -> list[dict[str, Any]]:
    """The job's metrics.jsonl rows of ``rounds`` (bytes each way, participants)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("round") in rounds]


def run_case(
    case: Case,
    rounds: int,
    repeats: int,
    *,
    per_process: int,
    job_timeout: float,
    keep: Path | None,
) -> dict[str, Any]:
    """Run ``case`` ``repeats`` times; return its figures, or its failure with the evidence.

    Each job runs in a temporary folder, or in a new folder under ``keep`` that is kept.
    """
    runs = []
    for _ in range(repeats):
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if keep is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{case.name}-"))
            else:
                tmp = tempfile.mkdtemp(prefix=f"{case.name}-", dir=keep)
            try:
                runs.append(run_job(case, rounds, Path(tmp), per_process, job_timeout))
            except JobFailedError as failure:
                return {"clients": case.clients, "model_mib": case.model_mib, "error": str(failure)}
    return {
        "clients": case.clients,
        "model_mib": case.model_mib,
        "client_processes": runs[0]["client_processes"],
        "rounds_measured": len(runs) * (rounds - 1),
        "round_s": summary([s for run in runs for s in run["round_s"]]),
        "cycle_s": summary([s for run in runs for s in run["cycle_s"]]),
        "join_s": summary([run["join_s"] for run in runs]),
        "server_peak_rss_mib": max(run["server_peak_rss_mib"] for run in runs),
        "client_peak_rss_mib": max(max(run["client_peak_rss_mib"]) for run in runs),
        # CPU of whole jobs (start-up, all rounds, final evaluation), per job
        "job_s": summary([run["job_s"] for run in runs]),
        "server_cpu_s": summary([run["server_cpu_s"] for run in runs]),
        "clients_cpu_s": summary([run["clients_cpu_s"] for run in runs]),
    }


def cases(which: list[str], counts: list[int], big_mib: float, payload: str) -> list[Case]:
    """The cases the flags select, in order."""
    selected = []
    if "big" in which:
        selected.append(Case("big", big_mib, 2, payload))
    if "many" in which:
        selected.extend(Case(f"many-{count}", TINY_MIB, count, payload) for count in counts)
    return selected


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Print one line per case: seconds per round (median [min, max]) and peak RSS."""
    print(
        f"{'case':>10} {'clients':>7} {'MiB':>7}  {'round_s median [min, max]':>28}  "
        f"{'cycle_s median [min, max]':>28}  {'server RSS':>10}  {'client RSS':>10}"
    )
    for name, figures in results.items():
        if "error" in figures:
            first = figures["error"].splitlines()[0]
            print(f"{name:>10} {figures['clients']:>7} FAILED: {first}")
            continue

        def cell(key: str, f: dict[str, Any] = figures) -> str:
            s = f[key]
            return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

        print(
            f"{name:>10} {figures['clients']:>7} {figures['model_mib']:>7g}  "
            f"{cell('round_s'):>28}  {cell('cycle_s'):>28}  "
            f"{figures['server_peak_rss_mib']:>7.0f} MiB  "
            f"{figures['client_peak_rss_mib']:>7.0f} MiB"
        )


def main() -> int:
    """Run the selected cases, print the table, write the JSON; 1 if any case failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", default="big,many", help="comma-separated: big, many")
    parser.add_argument("--counts", default="10,100,1000", help="client counts of 'many'")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (round 1 skipped)")
    parser.add_argument("--repeats", type=int, default=1, help="jobs per case")
    parser.add_argument("--big-mib", type=float, default=256.0, help="model size of 'big'")
    parser.add_argument("--per-process", type=int, default=100, help="client threads a process")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--keep", type=Path, help="keep each job's logs in a folder under this")
    parser.add_argument(
        "--payload", choices=PAYLOADS, default="random", help="zeros: a labelled comparison only"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is warm-up)")
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = set(which) - {"big", "many"}
    if unknown:
        parser.error(f"--which: unknown {sorted(unknown)}")
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    results: dict[str, dict[str, Any]] = {}
    conditions = Conditions()
    for case in cases(which, counts, args.big_mib, args.payload):
        results[case.name] = run_case(
            case,
            args.rounds,
            args.repeats,
            per_process=args.per_process,
            job_timeout=args.job_timeout,
            keep=args.keep,
        )
        if "error" in results[case.name]:
            print(results[case.name]["error"], file=sys.stderr)
    conditions.end()
    print_table(results)
    label = "" if args.payload == "random" else "; ZERO-FILLED models (comparison only)"
    print(f"{args.rounds} rounds per job, round 1 skipped; {args.repeats} job(s) per case{label}")
    print(conditions.line())
    report = {
        "rounds": args.rounds,
        "repeats": args.repeats,
        "payload": args.payload,
        "conditions": conditions.as_dict(),
        "cases": results,
    }
    write_report(args.json, report)
    return 1 if any("error" in figures for figures in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
