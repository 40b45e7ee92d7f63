"""Read a run folder's metrics.jsonl into typed rows; a bad line is one ConfigError naming it.

The rows are written by ``fedsilo.server.run_files.MetricsLog`` (fields in README.md). Any field
may be missing (row 0 has no training fields, an aborted run's last row has no evaluation, files
written before central evaluation, named metrics or DP have none of those); a field that is
present must have the right type. Fields this reader does not know are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.common.errors import ConfigError

# Same name as fedsilo.server.run_files.METRICS_FILE; not imported, which would load torch.
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class ClientEval:
    """One client's evaluation of a round's global model."""

    client_id: int
    examples: int | None
    loss: float | None
    accuracy: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    # Why this client has no evaluation this round, when it reported one instead.
    error: str | None = None


@dataclass(frozen=True)
class Dropout:
    """A client dropped from a round, with why, when and in which phase."""

    client_id: int
    reason: str | None
    phase: str | None
    after_seconds: float | None


@dataclass(frozen=True)
class Row:
    """One line of metrics.jsonl: the global model after round ``round``."""

    round: int
    time: str | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_examples: int | None = None
    eval_clients: tuple[ClientEval, ...] = ()
    # Named extra metrics (AUROC, sensitivity, ...) of the clients' evaluation.
    eval_metrics: Mapping[str, float] = field(default_factory=dict)
    # The global model on the server's own evaluation set, when the task has one.
    central_loss: float | None = None
    central_accuracy: float | None = None
    central_examples: int | None = None
    central_metrics: Mapping[str, float] = field(default_factory=dict)
    # The DP accountant's epsilon spent up to this round.
    epsilon: float | None = None
    train_loss: float | None = None
    train_examples: int | None = None
    participants: tuple[int, ...] | None = None
    selected: tuple[int, ...] | None = None
    dropped: tuple[Dropout, ...] = ()
    bytes_down: int | None = None
    bytes_up: int | None = None
    seconds: float | None = None


class _FieldError(ValueError):
    """A field whose value has the wrong type; turned into a ConfigError with the line."""


def _float(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldError(f"{key} is {value!r}, not a number")
    return float(value)


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"{key} is {value!r}, not an integer")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _FieldError(f"{key} is {value!r}, not a string")
    return value


def _objects(obj: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _FieldError(f"{key} is not a list of objects")
    return value


def _named(obj: Mapping[str, Any], key: str) -> dict[str, float]:
    """Return an object of named metrics; a null value counts as absent."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _FieldError(f"{key} is not an object of named metrics")
    metrics = {}
    for name, number in value.items():
        if not name:
            raise _FieldError(f"{key} has a metric without a name")
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _FieldError(f"{key}.{name} is {number!r}, not a number")
        metrics[name] = float(number)
    return metrics


def _ids(obj: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise _FieldError(f"{key} is not a list of client ids")
    return tuple(value)


def _client_id(obj: Mapping[str, Any], key: str) -> int:
    client_id = _int(obj, "client_id")
    if client_id is None:
        raise _FieldError(f"an entry of {key} has no client_id")
    return client_id


def _client_eval(item: Mapping[str, Any]) -> ClientEval:
    """Return one entry of eval_clients: its values, or the error it reported instead."""
    return ClientEval(
        client_id=_client_id(item, "eval_clients"),
        examples=_int(item, "examples"),
        loss=_float(item, "loss"),
        accuracy=_float(item, "accuracy"),
        metrics=_named(item, "metrics"),
        error=_str(item, "error"),
    )


def _row(obj: Any) -> Row:
    """Return the Row for one decoded JSON line; raise _FieldError naming a wrong field."""
    if not isinstance(obj, dict):
        raise _FieldError("not a JSON object")
    number = _int(obj, "round")
    if number is None or number < 0:
        raise _FieldError("round is missing or negative")
    return Row(
        round=number,
        time=_str(obj, "time"),
        eval_loss=_float(obj, "eval_loss"),
        eval_accuracy=_float(obj, "eval_accuracy"),
        eval_examples=_int(obj, "eval_examples"),
        eval_clients=tuple(_client_eval(item) for item in _objects(obj, "eval_clients")),
        eval_metrics=_named(obj, "eval_metrics"),
        central_loss=_float(obj, "central_loss"),
        central_accuracy=_float(obj, "central_accuracy"),
        central_examples=_int(obj, "central_examples"),
        central_metrics=_named(obj, "central_metrics"),
        epsilon=_float(obj, "epsilon"),
        train_loss=_float(obj, "train_loss"),
        train_examples=_int(obj, "train_examples"),
        participants=_ids(obj, "participants"),
        selected=_ids(obj, "selected"),
        dropped=tuple(
            Dropout(
                client_id=_client_id(item, "dropped"),
                reason=_str(item, "reason"),
                phase=_str(item, "phase"),
                after_seconds=_float(item, "after_seconds"),
            )
            for item in _objects(obj, "dropped")
        ),
        bytes_down=_int(obj, "bytes_down"),
        bytes_up=_int(obj, "bytes_up"),
        seconds=_float(obj, "seconds"),
    )


def read_metrics(run_dir: Path) -> list[Row]:
    """Return the rows of ``run_dir``/metrics.jsonl in file order; blank lines are skipped."""
    path = run_dir / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file (is {run_dir} a run folder?)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_row(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        except _FieldError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from exc
    return rows
