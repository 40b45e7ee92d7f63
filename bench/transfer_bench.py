"""A model through the real daemons, both directions, interleaved with its ceilings.

    python bench/transfer_bench.py [--repeats 3] [--mib 1024] [--payload random|zeros]
                                   [--json out.json]

Each repetition runs, in this order: a plain grpcio stream, a raw TCP connection (both
``bench/streams.py``: two processes, one fresh connection, the same bytes down and up in the
same four rounds), then one fedsilo job: ``fl-server`` and one ``fl-client`` (plaintext,
127.0.0.1) for four rounds of ``bench.bench_task:NoopTask`` (seeded random weights; training
does nothing), so a round is all transfer. Every boundary is the sender's first byte to the
receiver's last:

- download: the server's ``round_started`` (before the model goes out) to the client's
  ``model_received`` (decoded and checked);
- upload: the client's ``model_received`` (the no-op training and the upload follow at once)
  to the server's ``update_received`` (decoded, checked and folded into the round's sum).

Round 1 and the median of rounds 2-4 ("steady") are apart: in round 1 the upload lands in
freshly allocated memory. The ratios to the ceilings are taken within each repetition and
summarised over them (bench/harness.py). Peak RSS of each daemon from /usr/bin/time, with the
RSS of a process that only imports the server as a baseline. ``fedsilo_job()`` is also the
WAN benchmark's fedsilo trial, run inside network namespaces.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import streams
from bench.harness import (
    BIN,
    LOOPBACK,
    REPO,
    Conditions,
    Placement,
    cell,
    events,
    import_baseline_mib,
    interleave,
    markdown_table,
    max_rss_mib,
    ratios,
    stamp,
    stop,
    summary,
    write_report,
)

MIB = 1 << 20
ROUNDS = 4
TASK = "bench.bench_task:NoopTask"


def daemon_env() -> dict[str, str]:
    """Our environment with the repository root importable and the daemons on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    return env


def fedsilo_job(
    mib: float,
    workdir: Path,
    *,
    rounds: int = ROUNDS,
    payload: str = "random",
    placement: Placement = LOOPBACK,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """One fedsilo job of ``rounds`` rounds: seconds each way and of each round, peak RSS."""
    host, port = placement.address()
    config = workdir / "job.toml"
    config.write_text(
        f'task = "{TASK}"\n[task_options]\nmodel_mib = {mib}\npayload = "{payload}"\n'
    )
    timing = ["/usr/bin/time", "-f", "MAXRSS %M"]
    server_err, client_err = workdir / "server.err", workdir / "client.err"
    # fmt: off
    server_cmd = [
        *placement.server_prefix, *timing, str(BIN / "fl-server"), "--insecure", "--job-id", "1",
        "--port-base", str(port - 1), "--host", placement.bind,
        "--config", str(config), "--rounds", str(rounds), "--min-clients", "1",
        "--log-level", "debug", "--out", str(workdir / "run"),
    ]
    client_cmd = [
        *placement.client_prefix, *timing, str(BIN / "fl-client"), "--insecure",
        "--server", f"{host}:{port}", "--name", "bench", "--threads", "1",
        "--log-level", "debug", "--connect-timeout", "60",
        "--config", str(config),  # the job's task: the client runs it by its own choice
    ]
    # fmt: on
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with server_err.open("wb") as serr, client_err.open("wb") as cerr:
            for argv, err in ((server_cmd, serr), (client_cmd, cerr)):
                processes.append(
                    subprocess.Popen(
                        argv,
                        stderr=err,
                        stdout=subprocess.DEVNULL,
                        env=daemon_env(),
                        start_new_session=True,
                    )
                )
            codes = [process.wait(timeout=timeout) for process in processes]
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"fedsilo job ran past {timeout:g}s; see {workdir}") from None
    finally:
        for process in processes:
            stop(process)
    if any(codes):
        tail = server_err.read_text()[-2000:] + client_err.read_text()[-2000:]
        raise RuntimeError(f"daemons exited {codes}; see {workdir}:\n{tail}")
    return _job_figures(events(server_err), events(client_err), rounds) | {
        "server_peak_rss_mib": max_rss_mib(server_err),
        "client_peak_rss_mib": max_rss_mib(client_err),
    }


def _job_figures(
    server: list[dict[str, Any]], client: list[dict[str, Any]], rounds: int
) -> dict[str, Any]:
    """Per-round seconds down, up and of the whole round, from both daemons' logs."""

    def at(log: list[dict[str, Any]], event: str, number: int) -> float:
        return next(stamp(e) for e in log if e["event"] == event and e.get("round") == number)

    numbers = range(1, rounds + 1)
    received = {n: at(client, "model_received", n) for n in numbers}
    writing = {e["round"]: stamp(e) for e in server if e["event"] == "checkpoint_writing"}
    saved = {e["round"]: stamp(e) for e in server if e["event"] == "checkpoint_saved"}
    return {
        # When each round's model went out and its update was in, and each checkpoint write.
        "round_windows": [
            (at(server, "round_started", n), at(server, "update_received", n)) for n in numbers
        ],
        "checkpoint_windows": [(writing[n], saved[n]) for n in sorted(writing) if n in saved],
        "down_s": [received[n] - at(server, "round_started", n) for n in numbers],
        "up_s": [at(server, "update_received", n) - received[n] for n in numbers],
        "round_s": [
            float(
                next(e["seconds"] for e in server if e["event"] == "round_done" and e["round"] == n)
            )
            for n in numbers
        ],
    }


def rates(seconds: dict[str, list[float]], total: float) -> dict[str, float]:
    """GB/s each way in round 1 and steady (the median of the later rounds)."""
    figures = {}
    for way in ("down", "up"):
        times = seconds[f"{way}_s"]
        figures[f"{way}_gbps_round1"] = total / times[0] / 1e9
        figures[f"{way}_gbps"] = total / statistics.median(times[1:]) / 1e9
    return figures


def fedsilo_trial(mib: float, payload: str) -> dict[str, float]:
    """One loopback job of ROUNDS rounds: GB/s each way, peak RSS of each daemon."""
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        job = fedsilo_job(mib, Path(tmp), payload=payload)
    return rates(job, mib * MIB) | {
        "server_peak_rss_mib": job["server_peak_rss_mib"],
        "client_peak_rss_mib": job["client_peak_rss_mib"],
    }


def ceiling_trial(kind: str, mib: float) -> dict[str, float]:
    """GB/s of ``kind`` (tcp, grpc) moving the same bytes in the same rounds, loopback."""
    total = int(mib * MIB)
    return rates(streams.measure(kind, total, ROUNDS), total)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--payload", choices=["random", "zeros"], default="random")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conditions = Conditions()
    repetitions = interleave(
        [
            ("grpc", lambda: ceiling_trial("grpc", args.mib)),
            ("tcp", lambda: ceiling_trial("tcp", args.mib)),
            ("fedsilo", lambda: fedsilo_trial(args.mib, args.payload)),
        ],
        args.repeats,
        progress=lambda rep, name, figures: print(f"rep {rep + 1} {name}: {figures}", flush=True),
    )
    conditions.end()
    report = report_of(repetitions, args.mib, args.payload, conditions)
    report["import_baseline_rss_mib"] = import_baseline_mib()
    print_report(report)
    write_report(args.json, report)


def report_of(
    repetitions: list[dict[str, dict[str, float]]], mib: int, payload: str, conditions: Conditions
) -> dict[str, Any]:
    """Figures (median, min, max over repetitions) and per-repetition ratios to the ceilings."""
    figures = {
        f"{trial}.{name}": summary([rep[trial][name] for rep in repetitions])
        for trial in repetitions[0]
        for name in repetitions[0][trial]
    }
    ratio = {
        f"{measure} / {ceiling}": ratios(repetitions, f"fedsilo.{measure}", f"{ceiling}.{measure}")
        for measure in ("down_gbps_round1", "down_gbps", "up_gbps_round1", "up_gbps")
        for ceiling in ("grpc", "tcp")
    }
    return {
        "model_mib": mib,
        "payload": payload,
        "repeats": len(repetitions),
        "conditions": conditions.as_dict(),
        "figures": figures,
        "ratios": ratio,
        "repetitions": repetitions,
    }


def print_report(report: dict[str, Any]) -> None:
    """Print the figures and the ratios as Markdown tables."""
    label = "" if report["payload"] == "random" else " (ZERO-FILLED model: comparison only)"
    print(f"\nmodel {report['model_mib']} MiB{label}, {report['repeats']} repetitions")
    rows = [[key, cell(value)] for key, value in report["figures"].items()]
    print(markdown_table(["figure", "median [min, max]"], rows))
    rows = [[key, cell(value)] for key, value in report["ratios"].items()]
    print(markdown_table(["fedsilo / ceiling, per repetition", "median [min, max]"], rows))
    print(f"import baseline {report['import_baseline_rss_mib']:.0f} MiB")
    print(report["conditions"]["line"])


if __name__ == "__main__":
    main()
