"""Checks of the numbers a client reports with its update or final evaluation. Pure functions.

A client's metrics end up in metrics.jsonl, TensorBoard and the checkpoint; a NaN there used to
crash the coordinator's JSON writer for good. Every number is checked once, here, at the
boundary: a report that fails refuses the update it came with, and never reaches a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedsilo.common.metric_names import metrics_problem
from fedsilo.common.proto import federation_pb2 as pb

MAX_LOSS = 1e12  # a loss beyond this is a diverged or hostile model, not a measurement
MAX_SECONDS = 1e7  # about 116 days
MAX_EPSILON = 1e9  # record-level epsilon: beyond this nothing is protected anyway
MAX_METRIC = 1e12  # a named metric's magnitude, like a loss's


class ReportError(ValueError):
    """A reported number that is not finite or out of its range."""


def _check(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ReportError(f"{name} {value!r} is not a finite number in [{low:g}, {high:g}]")


def check_evaluation(evaluation: pb.Evaluation, max_examples: int, what: str) -> None:
    """Raise ReportError unless an evaluation's numbers are finite and in range."""
    if evaluation.examples > max_examples:
        raise ReportError(
            f"{what}: evaluated on {evaluation.examples} examples, more than "
            f"max_examples={max_examples}"
        )
    _check(f"{what}: loss", evaluation.loss, -MAX_LOSS, MAX_LOSS)
    _check(f"{what}: accuracy", evaluation.accuracy, 0.0, 1.0)
    check_named_metrics(evaluation.metrics, what)


def check_named_metrics(named: Mapping[str, float], what: str) -> None:
    """Raise ReportError unless the named metrics follow the rule and each is in range."""
    problem = metrics_problem(named)
    if problem is not None:
        raise ReportError(f"{what}: {problem}")
    for name, value in named.items():
        _check(f"{what}: metric {name}", value, -MAX_METRIC, MAX_METRIC)


def check_local_metrics(metrics: pb.LocalMetrics, max_examples: int) -> None:
    """Raise ReportError unless the metrics sent with an update are finite and in range."""
    _check("train_loss", metrics.train_loss, -MAX_LOSS, MAX_LOSS)
    _check("train_seconds", metrics.train_seconds, 0.0, MAX_SECONDS)
    if metrics.HasField("dp_epsilon"):
        _check("dp_epsilon", metrics.dp_epsilon, 0.0, MAX_EPSILON)
    if metrics.HasField("evaluation"):
        check_evaluation(metrics.evaluation, max_examples, "evaluation")
