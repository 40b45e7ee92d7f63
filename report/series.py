"""What a report shows: the metrics the runs hold, each one's value per row, and the x axis.

Pure functions of the rows, shared by the plots and the tables, so both always agree on which
metrics exist, where a value comes from and which direction is better.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import accumulate

from fedsilo.report.metrics_file import Row
from fedsilo.report.summary import Run


class Source(Enum):
    """Where a metric's value was measured."""

    CLIENTS = "clients"
    CENTRAL = "central"
    ACCOUNTANT = "accountant"


SOURCE_TITLES = {
    Source.CLIENTS: "clients' held-out data",
    Source.CENTRAL: "central evaluation set",
    Source.ACCOUNTANT: "DP accountant",
}


class Kind(Enum):
    """Which fields of a row hold a metric."""

    ACCURACY = "accuracy"
    LOSS = "loss"
    NAMED = "named"
    EPSILON = "epsilon"


class XAxis(Enum):
    """What the plots' x axis counts."""

    ROUND = "round"
    BYTES = "bytes"
    SECONDS = "seconds"


# A named metric is taken as lower-is-better when one of these words is in its name (split at
# anything but letters and digits); --minimize adds names the rule gets wrong.
LOWER_IS_BETTER_WORDS = frozenset(
    {"loss", "error", "err", "ece", "brier", "mse", "mae", "rmse", "perplexity", "fpr", "fnr"}
)


@dataclass(frozen=True)
class Metric:
    """One quantity of the report: accuracy, loss, a named extra metric or epsilon."""

    kind: Kind
    name: str
    lower_is_better: bool

    @property
    def sources(self) -> tuple[Source, ...]:
        """Return where this metric can come from, in the order the report shows them."""
        if self.kind is Kind.EPSILON:
            return (Source.ACCOUNTANT,)
        return (Source.CLIENTS, Source.CENTRAL)

    def value(self, row: Row, source: Source) -> float | None:
        """Return this metric's value in ``row`` as measured by ``source``, if it has one."""
        central = source is Source.CENTRAL
        if self.kind is Kind.ACCURACY:
            return row.central_accuracy if central else row.eval_accuracy
        if self.kind is Kind.LOSS:
            return row.central_loss if central else row.eval_loss
        if self.kind is Kind.NAMED:
            return (row.central_metrics if central else row.eval_metrics).get(self.name)
        return row.epsilon if source is Source.ACCOUNTANT else None

    def client_values(self, row: Row) -> list[float]:
        """Return the values the clients reported one by one in ``row`` (for the band)."""
        values: list[float | None]
        if self.kind is Kind.ACCURACY:
            values = [c.accuracy for c in row.eval_clients]
        elif self.kind is Kind.LOSS:
            values = [c.loss for c in row.eval_clients]
        elif self.kind is Kind.NAMED:
            values = [c.metrics.get(self.name) for c in row.eval_clients]
        else:
            values = []
        return [v for v in values if v is not None]


def lower_is_better(name: str, minimize: Collection[str] = ()) -> bool:
    """Return whether a smaller value of the named metric is the better one."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return name in minimize or bool(words & LOWER_IS_BETTER_WORDS)


ACCURACY = Metric(Kind.ACCURACY, "accuracy", lower_is_better=False)
LOSS = Metric(Kind.LOSS, "loss", lower_is_better=True)
EPSILON = Metric(Kind.EPSILON, "epsilon", lower_is_better=True)


def named_metrics(runs: Sequence[Run]) -> list[str]:
    """Return the names of the extra metrics any row of any run holds, sorted."""
    names: set[str] = set()
    for run in runs:
        for row in run.rows:
            names.update(row.eval_metrics, row.central_metrics)
    return sorted(names)


def has_values(runs: Sequence[Run], metric: Metric, source: Source) -> bool:
    """Return whether any row of any run holds ``metric`` from ``source``."""
    return any(metric.value(row, source) is not None for run in runs for row in run.rows)


def metrics_present(runs: Sequence[Run], minimize: Collection[str] = ()) -> list[Metric]:
    """Return the report's metrics: accuracy and loss always, extras and epsilon when present."""
    metrics = [ACCURACY, LOSS]
    metrics += [
        Metric(Kind.NAMED, name, lower_is_better(name, minimize)) for name in named_metrics(runs)
    ]
    if has_values(runs, EPSILON, Source.ACCOUNTANT):
        metrics.append(EPSILON)
    return metrics


def x_positions(rows: Sequence[Row], axis: XAxis) -> list[float]:
    """Return each row's x: its round, or the bytes (up + down) or seconds of rounds 1 to it.

    Row r is the model after round r, so its cost is that of every round up to r; row 0 (the
    initial model) cost nothing. A row without the field adds nothing.
    """
    if axis is XAxis.ROUND:
        return [float(row.round) for row in rows]
    if axis is XAxis.BYTES:
        steps = [float((row.bytes_up or 0) + (row.bytes_down or 0)) for row in rows]
    else:
        steps = [row.seconds or 0.0 for row in rows]
    return list(
        accumulate(step if row.round >= 1 else 0.0 for step, row in zip(steps, rows, strict=True))
    )


def points(
    rows: Sequence[Row], xs: Sequence[float], value: Metric, source: Source
) -> tuple[list[float], list[float]]:
    """Return the x and the value of the rows that hold ``value`` from ``source``."""
    pairs = [
        (x, v)
        for x, row in zip(xs, rows, strict=True)
        if (v := value.value(row, source)) is not None
    ]
    return [x for x, _ in pairs], [v for _, v in pairs]


def client_spread(
    rows: Sequence[Row], xs: Sequence[float], metric: Metric
) -> tuple[list[float], list[float], list[float]]:
    """Return the x of the rows where clients reported ``metric``, with the lowest and highest."""
    spread: list[tuple[float, float, float]] = []
    for x, row in zip(xs, rows, strict=True):
        values = metric.client_values(row)
        if values:
            spread.append((x, min(values), max(values)))
    return [s[0] for s in spread], [s[1] for s in spread], [s[2] for s in spread]
