"""Classification metrics for ``Evaluation.metrics``, binary and multi-class, with numpy.

``classification_metrics(probabilities, labels, names)`` computes any of ``CLASSIFIER_METRICS``
from the predicted class probabilities (n x classes) and the true labels:

- ``auroc``: area under the ROC curve (the Mann-Whitney statistic, ties counted half);
- ``sensitivity`` (= ``recall``), ``specificity``, ``precision``, ``f1``: of the argmax
  prediction;
- ``ece``: expected calibration error of the top-class confidence in 15 equal-width bins
  (Guo et al. 2017), ``sum_b (n_b / n) |accuracy_b - confidence_b|``.

Two classes: the positive class is 1 (scores are its probability). More classes: each class
against the rest, then the unweighted mean over the classes present in ``labels`` (macro
averaging, as scikit-learn's ``average="macro"`` with ``labels`` = the classes present;
a precision whose class is never predicted counts 0, as its ``zero_division=0``).
A metric that the data leave undefined (AUROC or sensitivity without a positive example,
specificity without a negative one) is left out rather than reported as NaN: the server then
averages it over the clients that have it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CLASSIFIER_METRICS = ("auroc", "sensitivity", "recall", "specificity", "precision", "f1", "ece")
ECE_BINS = 15

Array = np.ndarray


def check_metric_names(names: Sequence[str]) -> tuple[str, ...]:
    """Return ``names`` as a tuple; raise ValueError naming one that is not known here."""
    unknown = [name for name in names if name not in CLASSIFIER_METRICS]
    if unknown:
        raise ValueError(
            f"unknown classifier metric {unknown[0]!r}; choose from {', '.join(CLASSIFIER_METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def auroc(scores: Array, positive: Array) -> float | None:
    """Return the area under the ROC curve of ``scores`` for the boolean ``positive``."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    average_rank = ends - (counts - 1) / 2.0  # ranks 1..n, the mean rank of each tie group
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _one_vs_rest(predicted: Array, positive: Array) -> dict[str, float | None]:
    """Sensitivity, specificity, precision and F1 of ``predicted`` for boolean ``positive``."""
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    tn = int((~predicted & ~positive).sum())
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp) if tp + fp else (0.0 if sensitivity is not None else None)
    f1 = None
    if sensitivity is not None and precision is not None:
        f1 = 2 * precision * sensitivity / (precision + sensitivity) if tp else 0.0
    return {
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
    }


def expected_calibration_error(probabilities: Array, labels: Array, bins: int = ECE_BINS) -> float:
    """Return the expected calibration error of the top-class confidence."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            total += count * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return total / len(labels)


def _macro(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _per_class(probabilities: Array, labels: Array) -> dict[str, list[float | None]]:
    """Each one-vs-rest metric for every class present in ``labels`` (two classes: class 1)."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    wanted = [1] if classes == 2 else [int(k) for k in np.unique(labels)]
    table: dict[str, list[float | None]] = {"auroc": []}
    for k in wanted:
        positive = labels == k
        table["auroc"].append(auroc(probabilities[:, k], positive))
        for name, value in _one_vs_rest(predicted == k, positive).items():
            table.setdefault(name, []).append(value)
    return table


def classification_metrics(
    probabilities: Array, labels: Array, names: Sequence[str]
) -> dict[str, float]:
    """Return the metrics ``names`` (of CLASSIFIER_METRICS) that the data define."""
    wanted = check_metric_names(names)
    if len(labels) == 0 or not wanted:
        return {}
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError("classification metrics need probabilities of shape (examples, >= 2)")
    table = _per_class(probabilities, labels)
    compute: dict[str, Callable[[], float | None]] = {
        "ece": lambda: expected_calibration_error(probabilities, labels),
        "recall": lambda: _macro(table["sensitivity"]),
    }
    out: dict[str, float] = {}
    for name in wanted:
        value = compute[name]() if name in compute else _macro(table[name])
        if value is not None:
            out[name] = value
    return out
