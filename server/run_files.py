"""The files a job leaves in its run folder: metrics.jsonl and model.pt, written safely."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Write a file through ``write(fileobj)`` so that readers see the old or the new one whole.

    Temp file in the same folder, fsync, rename, then fsync of the folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Save a state dict that ``torch.load(path, weights_only=True)`` reads back."""
    atomic_write(path, lambda handle: torch.save(dict(state), handle))


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl, flushed and fsynced per line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def truncate(self, before_round: int) -> int:
        """Keep only the rows of rounds before ``before_round`` (resume); return how many."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line torn by a crash ends the usable part
            if row.get("round", before_round) >= before_round:
                break
            kept.append(line + "\n")
        atomic_write(self.path, lambda handle: handle.write("".join(kept).encode()))
        return len(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` as one line."""
        line = json.dumps(row, sort_keys=True, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
