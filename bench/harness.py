"""What the benchmarks share: ports, daemon logs, /usr/bin/time figures, stopping processes.

Standard library only, so that the Flower benchmark's roles can import it from their own venv.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv the benchmark runs in: fedsilo's daemons


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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
