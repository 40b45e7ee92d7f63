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


CLIENT_IDS_FILE = "client_ids.jsonl"


class ClientIdLog:
    """The job's name -> client id map, one line per new name, fsynced before the id is used.

    A client's id decides its data partition and training seeds, so it must survive a crash at
    any instant, including before the first checkpoint: a resumed job reads the ids back.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def load(self) -> dict[str, int]:
        """Return the ids recorded so far (a line torn by a crash ends the usable part)."""
        ids: dict[str, int] = {}
        if not self.path.exists():
            return ids
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                ids[str(entry["name"])] = int(entry["client_id"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break
        return ids

    def reset(self) -> None:
        """Forget every id (a fresh job in this folder)."""
        self.path.unlink(missing_ok=True)

    def record(self, name: str, client_id: int) -> None:
        """Append one new name's id, durably."""
        line = json.dumps({"name": name, "client_id": client_id}) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


FINISHED_FILE = "finished.json"


def mark_finished(run_dir: Path, rounds_completed: int) -> None:
    """Record, after its last row and model are on disk, that the job in ``run_dir`` is over."""
    record = {"rounds_completed": rounds_completed, "model": MODEL_FILE}
    atomic_write(run_dir / FINISHED_FILE, lambda handle: handle.write(json.dumps(record).encode()))


def finished_rounds(run_dir: Path) -> int | None:
    """Return the rounds of the finished job in ``run_dir``, or None if it did not finish."""
    try:
        record = json.loads((run_dir / FINISHED_FILE).read_text(encoding="utf-8"))
        return int(record["rounds_completed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
