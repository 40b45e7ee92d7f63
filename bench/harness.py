"""What the benchmarks share: the interleaved repetitions, per-repetition ratios, the
conditions of a run (machine, load average) and the report; ports, daemon logs, /usr/bin/time
figures, stopping processes; fl-sim jobs run in process.

Every figure that is compared with another (a ceiling, a peer, another setting) is measured
interleaved with it: repetition 1 runs A then B, repetition 2 runs A then B again, and so on,
so that the load of a shared machine, which drifts over minutes, falls on both alike. A ratio
is computed within each repetition and summarised over the repetitions (median, min, max of
the ratio itself, never the ratio of two medians). Every table carries the machine's cores and
the 1-minute load average at the start and at the end of the run.

Standard library only at import, so that the Flower benchmark's roles can import it from their
own venv (``run_sim`` imports fedsilo when it is called).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv the benchmark runs in: fedsilo's daemons
T = TypeVar("T")
# One repetition: each trial's figures by name, e.g. {"tcp": {"mbit_s": 940.0}, ...}
Repetition = dict[str, dict[str, float]]


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Placement:
    """Where a job's processes run: the address its server binds and its clients dial, and
    the command prefixes (``ip netns exec NS``) that put the server and clients in namespaces.
    """

    host: str = "127.0.0.1"
    port: int | None = None  # None: a port free on this host's loopback now
    server_prefix: tuple[str, ...] = ()
    client_prefix: tuple[str, ...] = ()

    def address(self) -> tuple[str, int]:
        """(host, port) the clients dial; a fresh free port unless one was given."""
        return self.host, self.port if self.port is not None else free_port()

    @property
    def bind(self) -> str:
        """The address the server binds: in a namespace of its own, every address."""
        return "0.0.0.0" if self.server_prefix else self.host


LOOPBACK = Placement()


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------- interleaving


def interleave(
    trials: Sequence[tuple[str, Callable[[], T]]],
    repeats: int,
    *,
    progress: Callable[[int, str, T], None] | None = None,
) -> list[dict[str, T]]:
    """Run every trial once per repetition, in order (A, B, A, B, ...); one dict per repetition.

    ``progress`` is told of each result as it comes (repetition from 0, trial name, result).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats})")
    names = [name for name, _ in trials]
    if len(set(names)) != len(names):
        raise ValueError(f"trial names must be unique: {names}")
    repetitions: list[dict[str, T]] = []
    for repetition in range(repeats):
        results: dict[str, T] = {}
        for name, trial in trials:
            results[name] = trial()
            if progress is not None:
                progress(repetition, name, results[name])
        repetitions.append(results)
    return repetitions


def column(repetitions: Sequence[Mapping[str, Mapping[str, float]]], key: str) -> list[float]:
    """The figure ``key`` ("trial.figure") of every repetition, in order."""
    trial, figure = _split(key)
    return [float(repetition[trial][figure]) for repetition in repetitions]


def ratios(
    repetitions: Sequence[Mapping[str, Mapping[str, float]]], numerator: str, denominator: str
) -> dict[str, Any]:
    """The ratio numerator / denominator ("trial.figure" each) within every repetition.

    Returns its median, min and max over the repetitions and the values themselves.
    """
    values = [
        top / bottom
        for top, bottom in zip(
            column(repetitions, numerator), column(repetitions, denominator), strict=True
        )
    ]
    return {"of": f"{numerator} / {denominator}", **summary(values), "values": values}


def _split(key: str) -> tuple[str, str]:
    trial, dot, figure = key.partition(".")
    if not dot or not trial or not figure:
        raise ValueError(f"a figure is named 'trial.figure', not {key!r}")
    return trial, figure


# ---------------------------------------------------------------------- conditions and report


def load_average() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


@dataclass
class Conditions:
    """The machine and its load over one benchmark run: made at the start, ``end()`` at the end."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 0)
    cpu: str = field(default_factory=cpu_model)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    load_start: float = field(default_factory=load_average)
    load_end: float | None = None

    def end(self) -> Conditions:
        """Note the load average at the end of the run; return self."""
        self.load_end = load_average()
        return self

    def line(self) -> str:
        """One line for under a table: cores, CPU, load average at start and end."""
        end = "?" if self.load_end is None else f"{self.load_end:.2f}"
        return (
            f"machine: {self.cores} cores ({self.cpu}); load average (1 min) "
            f"{self.load_start:.2f} at the start, {end} at the end; started {self.started}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The conditions for the JSON report."""
        return {
            "cores": self.cores,
            "cpu": self.cpu,
            "started": self.started,
            "load_1min_start": self.load_start,
            "load_1min_end": self.load_end,
            "line": self.line(),
        }


def cell(figure: Mapping[str, float], digits: int = 2, unit: str = "") -> str:
    """``median [min, max]`` of a summary."""
    return (
        f"{figure['median']:.{digits}f}{unit} "
        f"[{figure['min']:.{digits}f}, {figure['max']:.{digits}f}]"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def write_report(path: Path | None, report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` (its folder made), if a path is given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def stamp(line: dict[str, Any]) -> float:
    """Seconds since the epoch of a structlog line."""
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def events(path: Path) -> list[dict[str, Any]]:
    """JSON lines of a daemon's stderr.

    A line may carry text after its JSON object: a daemon that logs from another thread while
    it exits can lose the line's newline, and /usr/bin/time then appends to the same line.
    """
    decoder = json.JSONDecoder()
    out = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            out.append(decoder.raw_decode(raw)[0])
    return out


def max_rss_mib(path: Path) -> float:
    """The last 'MAXRSS <kb>' that /usr/bin/time (-f 'MAXRSS %M') wrote to ``path``, in MiB."""
    return _max_rss_mib(path.read_text(), str(path))


def _max_rss_mib(text: str, where: str) -> float:
    found = re.findall(r"MAXRSS (\d+)$", text, flags=re.MULTILINE)
    if not found:
        raise RuntimeError(f"no MAXRSS line in {where}")
    return int(found[-1]) / 1024


def import_baseline_mib() -> float:
    """Peak RSS of a process that only imports the server (Python, torch, grpc, fedsilo)."""
    result = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "MAXRSS %M",
            str(BIN / "python"),
            "-c",
            "import fedsilo.server.app",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return _max_rss_mib(result.stderr, "the import baseline's /usr/bin/time output")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a process we started, and its children, if still running: SIGTERM, then SIGKILL.

    Each was started in its own process group (``start_new_session``): /usr/bin/time passes
    no signal on to the daemon it wraps, so the whole group is signalled.
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# ---------------------------------------------------------------------- fl-sim in process


def add_sim_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """Add the flags of a benchmark that simulates jobs: clients, rounds, seed, threads, json."""
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")


def run_sim(
    args: argparse.Namespace, label: str, out: Path, **settings: Any
) -> tuple[list[dict[str, Any]], float]:
    """Simulate one job in process (the flags of ``add_sim_arguments``, then ``settings``).

    Returns its metrics.jsonl rows (round 0's evaluation first) and its seconds; exits naming
    ``label`` if the job aborted.
    """
    from fedsilo.sim.app import simulate  # here, not at the top: see the module's docstring
    from fedsilo.sim.config import SimConfig

    config = SimConfig(
        clients=args.clients,
        rounds=args.rounds,
        seed=args.seed,
        threads=args.threads,
        out=out,
        log_level="warning",
        **settings,
    )
    started = time.monotonic()
    result = simulate(config)
    seconds = time.monotonic() - started
    if not result.outcome.finished:
        raise SystemExit(f"{label}: the job aborted: {result.outcome.reason}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, seconds
