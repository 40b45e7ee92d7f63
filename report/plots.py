"""One figure per metric, one line per run, saved as PNG, PDF and/or SVG.

Each run keeps one style in every figure: a line style, a marker and a colour from a colour map
whose lightness rises steadily (viridis), so runs stay apart printed in black and white. A metric
measured both on the clients' held-out data and on the central evaluation set gets two panels
side by side with one y axis; the legend sits below the panels, outside the curves.

Drawn on a bare ``Figure`` with the Agg canvas rather than through pyplot, so no display and no
global backend state are involved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedsilo.report.series import (
    SOURCE_TITLES,
    Kind,
    Metric,
    Source,
    XAxis,
    client_spread,
    has_values,
    points,
    x_positions,
)
from fedsilo.report.summary import Run

DPI = 120
SIZE = (7.0, 4.2)
LINESTYLES = ("-", "--", ":", "-.")
# 7 markers and 4 line styles: the first 28 runs all differ in their (line style, marker) pair.
MARKERS = ("o", "s", "^", "D", "v", "X", "P")
# At most this many markers per line, so that a long run stays readable.
MARKERS_PER_LINE = 12
# Viridis from its darkest end to 0.8: lighter than that is too faint on white paper.
LIGHTEST = 0.8
LEGEND_COLUMNS = 4
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
# No dates in PDF or SVG, so that the same runs give the same bytes (with save_figure's ids).
SAVE_METADATA: dict[str, dict[str, str | None]] = {
    "png": {},
    "pdf": {"CreationDate": None},
    "svg": {"Date": None},
}


@dataclass(frozen=True)
class PlotOptions:
    """How the figures are drawn: what the x axis counts and whether the client band shows."""

    x: XAxis = XAxis.ROUND
    band: bool = True


@dataclass(frozen=True)
class Style:
    """How one run's line looks in every figure."""

    color: tuple[float, float, float, float]
    linestyle: str
    marker: str


def run_styles(count: int) -> list[Style]:
    """Return ``count`` styles: distinct line style and marker pairs, lightness rising."""
    colormap = matplotlib.colormaps["viridis"]
    spacing = LIGHTEST / (count - 1) if count > 1 else 0.0
    return [
        Style(
            color=colormap(i * spacing),
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            marker=MARKERS[i % len(MARKERS)],
        )
        for i in range(count)
    ]


def figure_stem(metric: Metric) -> str:
    """Return the file name (without suffix) of ``metric``'s figure."""
    if metric.kind is not Kind.NAMED:
        return metric.name
    # A named metric's name comes from a task: keep it to characters safe in any file system.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric.name).strip("._")[:64]
    return f"metric-{safe or 'unnamed'}"


def _byte_unit(runs: Sequence[Run]) -> tuple[str, float]:
    """Return the largest binary unit that the biggest cumulative byte count reaches."""
    most = max((max(x_positions(run.rows, XAxis.BYTES), default=0.0) for run in runs), default=0.0)
    power = 0
    while power + 1 < len(BYTE_UNITS) and most >= 1024.0 ** (power + 1):
        power += 1
    return BYTE_UNITS[power], 1024.0**power


def _x_axis(runs: Sequence[Run], axis: XAxis) -> tuple[str, float]:
    """Return the x label and the divisor that turns x positions into its unit."""
    if axis is XAxis.BYTES:
        unit, scale = _byte_unit(runs)
        return f"cumulative traffic, up + down ({unit})", scale
    if axis is XAxis.SECONDS:
        return "cumulative round time (s)", 1.0
    return "round", 1.0


def _title(metric: Metric, band: bool) -> str:
    if metric.kind is Kind.EPSILON:
        return "Privacy spent (DP accountant's ε)"
    name = {Kind.ACCURACY: "Accuracy", Kind.LOSS: "Loss"}.get(metric.kind, metric.name)
    return f"{name} (band: lowest to highest client)" if band else name


def _draw_run(
    axes: Axes,
    run: Run,
    xs: Sequence[float],
    *,
    metric: Metric,
    source: Source,
    style: Style,
    band: bool,
    index: int,
) -> Artist | None:
    """Draw one run's line (and its client band) on ``axes``; return the line, if any."""
    x, y = points(run.rows, xs, metric, source)
    if not x:
        return None
    step = max(1, math.ceil(len(x) / MARKERS_PER_LINE))
    # Runs start their markers at different points, so that markers of close curves alternate.
    (line,) = axes.plot(
        x,
        y,
        label=run.label,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=4,
        linewidth=1.4,
        markevery=(index % step, step),
    )
    if band and source is Source.CLIENTS:
        band_x, low, high = client_spread(run.rows, xs, metric)
        axes.fill_between(band_x, low, high, color=style.color, alpha=0.15, linewidth=0)
    return line


def metric_figure(runs: Sequence[Run], metric: Metric, options: PlotOptions) -> Figure:
    """Return the figure of ``metric``: a panel per source that measured it, a line per run."""
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    sources = [s for s in metric.sources if has_values(runs, metric, s)]
    band = options.band and Source.CLIENTS in sources and metric.kind is not Kind.EPSILON
    figure.suptitle(_title(metric, band))
    xlabel, scale = _x_axis(runs, options.x)
    panels = figure.subplots(1, max(1, len(sources)), sharey=True, squeeze=False)[0]
    for axes in panels:
        axes.set_xlabel(xlabel)
        axes.grid(True, alpha=0.3)
        if options.x is XAxis.ROUND:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels[0].set_ylabel("ε" if metric.kind is Kind.EPSILON else metric.name)
    if not sources:
        panels[0].text(
            0.5,
            0.5,
            "no evaluated rounds",
            ha="center",
            va="center",
            transform=panels[0].transAxes,
        )
        return figure
    legend: dict[str, Artist] = {}
    styles = run_styles(len(runs))
    for axes, source in zip(panels, sources, strict=True):
        if len(sources) > 1:
            axes.set_title(SOURCE_TITLES[source], fontsize="medium")
        for index, (run, style) in enumerate(zip(runs, styles, strict=True)):
            xs = [x / scale for x in x_positions(run.rows, options.x)]
            line = _draw_run(
                axes, run, xs, metric=metric, source=source, style=style, band=band, index=index
            )
            if line is not None:
                legend.setdefault(run.label, line)
    if len(sources) == 1 and metric.kind is not Kind.EPSILON:
        panels[0].set_title(SOURCE_TITLES[sources[0]], fontsize="medium")
    figure.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncols=min(len(legend), LEGEND_COLUMNS),
        fontsize="small",
        frameon=False,
    )
    return figure


def save_figure(figure: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Save ``figure`` as ``stem``.<format> for each format; return the paths."""
    paths = []
    # Fixed SVG ids: the same runs give the same bytes. Text stays text in SVG and fonts are
    # embedded as TrueType in PDF (no Type 3), which journals and editors can handle.
    with matplotlib.rc_context(
        {"svg.hashsalt": "fedsilo-report", "svg.fonttype": "none", "pdf.fonttype": 42}
    ):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            figure.savefig(path, format=fmt, metadata=SAVE_METADATA[fmt])
            paths.append(path)
    return paths
