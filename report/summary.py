"""One summary row per run, computed from its metrics rows, and the Markdown table of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedsilo.report.metrics_file import Row

MIB = 1024 * 1024
# (round, value) of one evaluated row.
Point = tuple[int, float]
MISSING = "—"


@dataclass(frozen=True)
class Run:
    """A run folder's rows under the label its plots and table give it."""

    label: str
    rows: Sequence[Row]


@dataclass(frozen=True)
class RunSummary:
    """The numbers one line of summary.md shows for a run."""

    label: str
    rounds: int
    last_round: int | None
    final_accuracy: Point | None
    best_accuracy: Point | None
    final_loss: Point | None
    mean_participants: float | None
    dropouts: int
    bytes_down: int
    bytes_up: int
    seconds: float


def _evaluated(rows: Sequence[Row], value: Callable[[Row], float | None]) -> list[Point]:
    """Return (round, value) for the rows that have ``value``, in file order."""
    return [(row.round, v) for row in rows if (v := value(row)) is not None]


def summarize(run: Run) -> RunSummary:
    """Return ``run``'s summary; final values are those of the last row that has them."""
    rows = run.rows
    trained = [row for row in rows if row.round >= 1]
    accuracies = _evaluated(rows, lambda row: row.eval_accuracy)
    losses = _evaluated(rows, lambda row: row.eval_loss)
    counts = [len(row.participants) for row in trained if row.participants is not None]
    return RunSummary(
        label=run.label,
        rounds=max((row.round for row in trained), default=0),
        last_round=rows[-1].round if rows else None,
        final_accuracy=accuracies[-1] if accuracies else None,
        # The earliest round wins a tie: max() keeps the first maximum it meets.
        best_accuracy=max(accuracies, key=lambda point: point[1], default=None),
        final_loss=losses[-1] if losses else None,
        mean_participants=sum(counts) / len(counts) if counts else None,
        dropouts=sum(len(row.dropped) for row in trained),
        bytes_down=sum(row.bytes_down or 0 for row in trained),
        bytes_up=sum(row.bytes_up or 0 for row in trained),
        seconds=sum(row.seconds or 0.0 for row in trained),
    )


def _at_round(point: Point | None, last_round: int | None, *, always: bool) -> str:
    """Format a value, naming its round when ``always`` or when it is not the last row's."""
    if point is None:
        return MISSING
    number, value = point
    if always or number != last_round:
        return f"{value:.4f} (r{number})"
    return f"{value:.4f}"


def _cell(text: str) -> str:
    """Escape the one character that would end a Markdown table cell."""
    return text.replace("|", "\\|")


COLUMNS = (
    "run",
    "rounds",
    "final accuracy",
    "best accuracy (round)",
    "final loss",
    "mean participants",
    "dropouts",
    "MiB down",
    "MiB up",
    "seconds",
)


def table_line(summary: RunSummary) -> str:
    """Return the Markdown table line of one run."""
    cells = (
        _cell(summary.label),
        str(summary.rounds),
        _at_round(summary.final_accuracy, summary.last_round, always=False),
        _at_round(summary.best_accuracy, summary.last_round, always=True),
        _at_round(summary.final_loss, summary.last_round, always=False),
        MISSING if summary.mean_participants is None else f"{summary.mean_participants:.2f}",
        str(summary.dropouts),
        f"{summary.bytes_down / MIB:.3f}",
        f"{summary.bytes_up / MIB:.3f}",
        f"{summary.seconds:.2f}",
    )
    return "| " + " | ".join(cells) + " |"


def summary_markdown(runs: Sequence[Run]) -> str:
    """Return summary.md: a heading, one table line per run and how to read it."""
    lines = [
        "# Run summary",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
        *(table_line(summarize(run)) for run in runs),
        "",
        "Accuracy and loss are example-weighted over the clients' held-out data. A final value "
        "marked (rN) comes from round N because the last row has no evaluation (an aborted run). "
        "Totals cover rounds 1 and later; MiB = 2^20 bytes.",
        "",
    ]
    return "\n".join(lines)


# At most this many failed evaluations are spelled out per run; the count covers all.
ERRORS_SHOWN = 5


def errors_section(runs: Sequence[Run]) -> str:
    """Return a section naming the client evaluations that reported an error, or ""."""
    lines = []
    for run in runs:
        failed = [(row.round, c) for row in run.rows for c in row.eval_clients if c.error]
        if not failed:
            continue
        shown = "; ".join(
            f"r{number} client {c.client_id}: {' '.join((c.error or '').split())}"
            for number, c in failed[:ERRORS_SHOWN]
        )
        more = f"; {len(failed) - ERRORS_SHOWN} more" if len(failed) > ERRORS_SHOWN else ""
        lines.append(f"- {_cell(run.label)}: {len(failed)} ({_cell(shown)}{more})")
    if not lines:
        return ""
    return "\n".join(["## Client evaluation errors", "", *lines, ""]) + "\n"
