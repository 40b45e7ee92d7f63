"""TensorBoardSink: each metrics row's scalars into ``run_dir/tensorboard/``, step = round.

Named extra metrics of the evaluations (``eval_metrics``, ``central_metrics``: AUROC, F1, ...)
go under ``eval/<name>`` and ``central/<name>`` (names follow ``common/metric_names.py``); one
named ``loss`` or ``accuracy`` would share a fixed tag, and the fixed tag's value wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsilo.common.errors import ConfigError

TENSORBOARD_FOLDER = "tensorboard"

# TensorBoard tag -> metrics.jsonl field; a row without the field (or with null) skips the tag.
SCALARS = {
    "eval/accuracy": "eval_accuracy",
    "eval/loss": "eval_loss",
    "central/accuracy": "central_accuracy",
    "central/loss": "central_loss",
    "train/loss": "train_loss",
    "bytes/down": "bytes_down",
    "bytes/up": "bytes_up",
    "round/seconds": "seconds",
}


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Return the TensorBoard scalars of one metrics row, by tag."""
    values = {
        tag: float(row[key])
        for tag, key in SCALARS.items()
        if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
    }
    for prefix, key in (("eval", "eval_metrics"), ("central", "central_metrics")):
        named = row.get(key)
        if isinstance(named, Mapping):
            for name, value in named.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.setdefault(f"{prefix}/{name}", float(value))
    if isinstance(row.get("participants"), list):
        values["round/participants"] = float(len(row["participants"]))
    return values


class TensorBoardSink:
    """Writes the scalars of each metrics row as TensorBoard events, flushed per row."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises this when the tensorboard package is absent
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'fedsilo[tensorboard]'"
            ) from exc
        self.log_dir = run_dir / TENSORBOARD_FOLDER
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def append(self, row: Mapping[str, Any]) -> None:
        """Write ``row``'s scalars at step ``row["round"]`` and flush them to disk."""
        step = int(row["round"])
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the events file."""
        self._writer.close()
