"""accuracy.png and loss.png: one line per run over the rounds, overlaid for comparison.

Drawn on a bare ``Figure`` with the Agg canvas rather than through pyplot, so no display and no
global backend state are involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedsilo.report.metrics_file import Row
from fedsilo.report.summary import Run

DPI = 120
SIZE = (7.0, 4.2)


def _points(
    rows: Sequence[Row], value: Callable[[Row], float | None]
) -> tuple[list[int], list[float]]:
    """Return the rounds that have ``value`` and the values, in file order."""
    pairs = [(row.round, v) for row in rows if (v := value(row)) is not None]
    return [number for number, _ in pairs], [v for _, v in pairs]


def _client_spread(rows: Sequence[Row]) -> tuple[list[int], list[float], list[float]]:
    """Return the rounds where clients reported accuracy, with the lowest and highest."""
    rounds: list[int] = []
    low: list[float] = []
    high: list[float] = []
    for row in rows:
        values = [c.accuracy for c in row.eval_clients if c.accuracy is not None]
        if values:
            rounds.append(row.round)
            low.append(min(values))
            high.append(max(values))
    return rounds, low, high


def _axes(figure: Figure, title: str, ylabel: str) -> Axes:
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    return axes


def _plot(
    runs: Sequence[Run],
    path: Path,
    value: Callable[[Row], float | None],
    title: str,
    ylabel: str,
    *,
    spread: bool,
) -> None:
    """Draw one line per run (and the per-client band when ``spread``) and save a PNG."""
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = _axes(figure, title, ylabel)
    drawn = False
    for run in runs:
        rounds, values = _points(run.rows, value)
        if not rounds:
            continue
        (line,) = axes.plot(rounds, values, marker="o", markersize=3, label=run.label)
        drawn = True
        if spread:
            band_rounds, low, high = _client_spread(run.rows)
            axes.fill_between(
                band_rounds, low, high, color=line.get_color(), alpha=0.15, linewidth=0
            )
    if drawn:
        axes.legend(loc="best", fontsize="small")
    else:
        axes.text(
            0.5, 0.5, "no evaluated rounds", ha="center", va="center", transform=axes.transAxes
        )
    figure.savefig(path, format="png")


def plot_accuracy(runs: Sequence[Run], path: Path) -> None:
    """Write eval accuracy per round, with each run's per-client min-max band, to ``path``."""
    _plot(
        runs,
        path,
        lambda row: row.eval_accuracy,
        "Evaluation accuracy (band: lowest to highest client)",
        "accuracy",
        spread=True,
    )


def plot_loss(runs: Sequence[Run], path: Path) -> None:
    """Write eval loss per round to ``path``."""
    _plot(runs, path, lambda row: row.eval_loss, "Evaluation loss", "loss", spread=False)
