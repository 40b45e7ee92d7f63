"""The final and best value of every metric per run, as a Markdown and a LaTeX (booktabs) table.

One group of lines per metric and source (accuracy on the clients' data, accuracy on the central
set, ...), one line per run. In each column of a group the best run's cell is bold: the highest
value, or the lowest for a lower-is-better metric. Epsilon has no "best" over the rounds (it only
grows); its final value is marked when lowest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsilo.report.series import SOURCE_TITLES, Kind, Metric, Source, has_values
from fedsilo.report.summary import MISSING, Point, Run

COLUMNS = ("metric", "data", "run", "final", "round", "best", "round")


@dataclass(frozen=True)
class Line:
    """One run's final and best value of one metric from one source."""

    label: str
    final: Point | None
    best: Point | None


@dataclass(frozen=True)
class Group:
    """The lines of one metric from one source, one per run, with the best cells found."""

    metric: Metric
    source: Source
    lines: tuple[Line, ...]
    best_final: float | None
    best_best: float | None


def _best(values: Sequence[Point], metric: Metric) -> Point | None:
    """Return the best (round, value); the earliest round wins a tie."""
    if not values:
        return None
    if metric.lower_is_better:
        return min(values, key=lambda point: point[1])
    return max(values, key=lambda point: point[1])


def _winner(points: Sequence[Point | None], metric: Metric) -> float | None:
    """Return the best value among the runs' cells of one column."""
    best = _best([point for point in points if point is not None], metric)
    return None if best is None else best[1]


def group(runs: Sequence[Run], metric: Metric, source: Source) -> Group:
    """Return the table lines of ``metric`` from ``source``: final and best per run."""
    lines = []
    for run in runs:
        values = [
            (row.round, v) for row in run.rows if (v := metric.value(row, source)) is not None
        ]
        best = None if metric.kind is Kind.EPSILON else _best(values, metric)
        lines.append(Line(run.label, values[-1] if values else None, best))
    return Group(
        metric,
        source,
        tuple(lines),
        best_final=_winner([line.final for line in lines], metric),
        best_best=_winner([line.best for line in lines], metric),
    )


def groups(runs: Sequence[Run], metrics: Sequence[Metric]) -> list[Group]:
    """Return one group per metric and source that any run holds, in the report's order."""
    return [
        group(runs, metric, source)
        for metric in metrics
        for source in metric.sources
        if has_values(runs, metric, source)
    ]


def _cells(line: Line, found: Group) -> tuple[tuple[str, bool], ...]:
    """Return final, its round, best, its round as (text, is best) pairs."""

    def pair(point: Point | None, winner: float | None) -> tuple[tuple[str, bool], ...]:
        if point is None:
            return ((MISSING, False), (MISSING, False))
        return ((f"{point[1]:.4f}", point[1] == winner), (str(point[0]), False))

    return pair(line.final, found.best_final) + pair(line.best, found.best_best)


def _data(source: Source) -> str:
    return {Source.CLIENTS: "clients", Source.CENTRAL: "central"}.get(source, "accountant")


def markdown_table(runs: Sequence[Run], metrics: Sequence[Metric]) -> str:
    """Return the Markdown table, a line per metric, source and run; best cells in bold."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---:|" * (len(COLUMNS) - 3),
    ]
    for found in groups(runs, metrics):
        for line in found.lines:
            cells = [f"**{text}**" if best else text for text, best in _cells(line, found)]
            name = found.metric.name.replace("|", "\\|")
            label = line.label.replace("|", "\\|")
            lines.append("| " + " | ".join([name, _data(found.source), label, *cells]) + " |")
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Return ``text`` with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def latex_table(runs: Sequence[Run], metrics: Sequence[Metric]) -> str:
    """Return a booktabs tabular of the same lines; best cells in \\textbf."""
    header = ["Metric", "Data", "Run", "Final", "Round", "Best", "Round"]
    out = [
        "% fl-report: final and best value per run; needs \\usepackage{booktabs}.",
        "% Bold: the best run in the column (lowest for loss, error and epsilon).",
        "\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}",
        "\\toprule",
        " & ".join(header) + " \\\\",
    ]
    for found in groups(runs, metrics):
        out.append("\\midrule")
        for number, line in enumerate(found.lines):
            first = number == 0
            cells = [
                f"\\textbf{{{text}}}" if best else text.replace(MISSING, "--")
                for text, best in _cells(line, found)
            ]
            name = latex_escape(found.metric.name) if first else ""
            data = _data(found.source) if first else ""
            out.append(" & ".join([name, data, latex_escape(line.label), *cells]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def source_note() -> str:
    """Return the sentence that says what the data column's words mean."""
    return "Data: " + "; ".join(f"{_data(s)} = {SOURCE_TITLES[s]}" for s in Source) + "."


def metrics_section(runs: Sequence[Run], metrics: Sequence[Metric]) -> str:
    """Return summary.md's section with the metric table and how to read it."""
    return "\n".join(
        [
            "## Final and best per metric",
            "",
            markdown_table(runs, metrics),
            "Final: the last row that has the value; best: the highest, or the lowest for loss, "
            "error and epsilon (epsilon has no best: it only grows). Bold: the best run in the "
            "column. " + source_note(),
            "",
        ]
    )
