"""fl-sim's closing lines: what ran where, how it ended, how fast, and where the files are."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fedsilo.server.run_files import METRICS_FILE, MODEL_FILE
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import ClientFailure, client_name

MAX_LISTED = 5  # failed clients named in the summary; the log has them all


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (none if it has none yet)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def where_line(backend: str, workers: int, threads: int | None, nodes: int = 1) -> str:
    """Where the clients ran: "in 2 worker processes, 1 torch thread each", ..."""
    if backend == "local" and workers == 0:
        where = "in this process"
    elif backend == "local":
        where = f"in {workers} worker process{'es' if workers != 1 else ''}"
    else:
        where = f"in {workers} Ray actor{'s' if workers != 1 else ''}"
        where += f" on {nodes} node{'s' if nodes != 1 else ''}"
    if threads is None:
        return f"{where}, torch's default threads"
    return f"{where}, {threads} torch thread{'s' if threads != 1 else ''} each"


def outcome_lines(config: SimConfig, rows: list[dict[str, Any]], seconds: float) -> list[str]:
    """Rounds, seconds per round, the final model's held-out accuracy and loss, the files."""
    rounds = [row for row in rows if row.get("round", 0) >= 1 and "seconds" in row]
    lines = []
    if rounds:
        per_round = [float(row["seconds"]) for row in rounds]
        lines.append(
            f"{len(rounds)} rounds in {seconds:.1f} s; seconds per round: median "
            f"{statistics.median(per_round):.3f}, min {min(per_round):.3f}, "
            f"max {max(per_round):.3f}"
        )
    else:
        lines.append(f"0 rounds in {seconds:.1f} s")
    final = rows[-1] if rows else {}
    if "eval_accuracy" in final:
        lines.append(
            f"final model (round {final['round']}): accuracy {final['eval_accuracy']:.4f}, "
            f"loss {final['eval_loss']:.4f} on {final['eval_examples']} held-out samples"
        )
    lines.append(f"metrics in {config.out / METRICS_FILE}, model in {config.out / MODEL_FILE}")
    return lines


def failures_line(failures: list[ClientFailure]) -> str | None:
    """One line naming the clients that failed (the first few), or None if none did."""
    if not failures:
        return None
    named = ", ".join(
        f"{client_name(f.index)} ({f.stage}: {f.error})" for f in failures[:MAX_LISTED]
    )
    more = f" and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
    clients = "client" if len(failures) == 1 else "clients"
    return f"{len(failures)} {clients} failed: {named}{more} (tracebacks in the log)"
