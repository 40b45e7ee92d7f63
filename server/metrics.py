"""Rows of metrics.jsonl: one per round, built from what the clients reported. Pure functions.

Row r describes the global model produced by round r. Its training fields come from round r's
updates; its evaluation fields from the clients' evaluation of that model on their held-out
data, which they send with their next update (or in the final evaluation after the last round),
so the model travels once per round instead of twice. Row 0 is the initial model's evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class ClientReport:
    """What one client delivered in one round, with the server's own measurements."""

    client_id: int
    name: str
    train_examples: int
    train_loss: float
    train_seconds: float
    bytes_down: int
    bytes_up: int
    seconds: float
    dp_epsilon: float | None = None  # the silo's record-level epsilon so far, as it reported
    local_steps: int = 0  # optimizer steps the client reports (FedNova normalizes by them)
    weight: float = 0.0  # the update's weight in the fold
    normalizer: float = 1.0  # what its base weight was divided by (FedNova's a_i; else 1)


@dataclass(frozen=True)
class ClientEvaluation:
    """One client's evaluation of a global model on its held-out data (and named extras)."""

    client_id: int
    examples: int
    loss: float
    accuracy: float
    metrics: Mapping[str, float] = field(default_factory=dict)


def _weighted(values: Iterable[tuple[float, float]]) -> float | None:
    pairs = list(values)
    total = sum(weight for _, weight in pairs)
    if total <= 0:
        return None
    return sum(value * weight for value, weight in pairs) / total


def round_row(
    number: int,
    *,
    selected: list[int],
    reports: Mapping[int, ClientReport],
    dropped: Mapping[int, Mapping[str, Any]],
    bytes_down: Mapping[int, int],
    seconds: float,
) -> dict[str, Any]:
    """Return the training part of round ``number``'s row."""
    clients = [reports[cid] for cid in sorted(reports)]
    return {
        "round": number,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "selected": selected,
        "participants": [c.client_id for c in clients],
        "dropped": [{"client_id": cid, **dropped[cid]} for cid in sorted(dropped)],
        "train_loss": _weighted((c.train_loss, c.train_examples) for c in clients),
        "train_examples": sum(c.train_examples for c in clients),
        "bytes_down": sum(bytes_down.values()),
        "bytes_up": sum(c.bytes_up for c in clients),
        "seconds": round(seconds, 4),
        "clients": [
            {
                "client_id": c.client_id,
                "name": c.name,
                "train_examples": c.train_examples,
                "train_loss": c.train_loss,
                "train_seconds": round(c.train_seconds, 4),
                "local_steps": c.local_steps,
                "bytes_down": c.bytes_down,
                "bytes_up": c.bytes_up,
                "seconds": round(c.seconds, 4),
                **({"dp_epsilon": c.dp_epsilon} if c.dp_epsilon is not None else {}),
            }
            for c in clients
        ],
    }


def initial_row() -> dict[str, Any]:
    """Return row 0, which only ever holds the initial model's evaluation."""
    return {"round": 0, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def with_evaluation(
    row: Mapping[str, Any],
    evaluations: Iterable[ClientEvaluation],
    errors: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Return ``row`` with the example-weighted evaluation and the per-client values added.

    ``errors``: why a client has no evaluation (its task failed), as ``{"client_id", "error"}``
    entries of eval_clients (what fl-report lists under "Client evaluation errors").
    """
    evals = sorted(evaluations, key=lambda e: e.client_id)
    extra = {"eval_metrics": named} if (named := named_means(evals)) else {}
    clients: list[dict[str, Any]] = [
        {
            "client_id": e.client_id,
            "examples": e.examples,
            "loss": e.loss,
            "accuracy": e.accuracy,
            **({"metrics": dict(e.metrics)} if e.metrics else {}),
        }
        for e in evals
    ]
    clients += [{"client_id": cid, "error": text} for cid, text in (errors or {}).items()]
    return {
        **row,
        "eval_loss": _weighted((e.loss, e.examples) for e in evals),
        "eval_accuracy": _weighted((e.accuracy, e.examples) for e in evals),
        "eval_examples": sum(e.examples for e in evals),
        **extra,
        "eval_clients": sorted(clients, key=lambda c: int(c["client_id"])),
    }


def named_means(evaluations: Iterable[ClientEvaluation]) -> dict[str, float]:
    """Return each named metric's example-weighted mean over the clients that report it."""
    evals = list(evaluations)
    names = sorted({name for e in evals for name in e.metrics})
    means = {}
    for name in names:
        mean = _weighted((e.metrics[name], e.examples) for e in evals if name in e.metrics)
        if mean is not None:
            means[name] = mean
    return means
