"""``fl-report``: plots and tables comparing the metrics.jsonl of run folders."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from fedsilo.common.cli import ArgumentParser, exit_process, run_cli
from fedsilo.common.errors import ConfigError
from fedsilo.report.metrics_file import read_metrics
from fedsilo.report.series import XAxis, metrics_present, named_metrics
from fedsilo.report.summary import Run, errors_section, summary_markdown
from fedsilo.report.tables import latex_table, metrics_section

PROG = "fl-report"
REPORT_FOLDER = "report"
# The keys of fedsilo.report.plots.SAVE_METADATA; not imported, which would load matplotlib.
FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = ("png",)


@dataclass(frozen=True)
class ReportOptions:
    """What fl-report writes besides the run folders and labels."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    x: XAxis = XAxis.ROUND
    band: bool = True
    latex: bool = False
    minimize: frozenset[str] = field(default_factory=frozenset)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def formats_flag(text: str) -> tuple[str, ...]:
    """Parse --format: a comma-separated choice among png, pdf and svg, each once."""
    names = _names(text)
    unknown = [name for name in names if name not in FORMATS]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of distinct formats among {', '.join(FORMATS)}"
        )
    return tuple(names)


def names_flag(text: str) -> frozenset[str]:
    """Parse --minimize: comma-separated metric names."""
    names = _names(text)
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated metric names")
    return frozenset(names)


def build_parser() -> ArgumentParser:
    """Return the fl-report argument parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Plot every metric of one or more run folders, overlaid (accuracy, loss, "
        "named metrics, epsilon; clients' and central evaluation), and tabulate each run's "
        "final and best values in summary.md (and table.tex).",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: report/ in the first RUN_DIR, ./report if that is read-only)",
    )
    parser.add_argument(
        "--labels", default=None, help="comma-separated names, one per RUN_DIR (default: folders)"
    )
    parser.add_argument(
        "--format",
        type=formats_flag,
        default=DEFAULT_FORMATS,
        metavar="LIST",
        help="figure formats, comma-separated among png, pdf, svg (default: png)",
    )
    parser.add_argument(
        "--x",
        choices=[axis.value for axis in XAxis],
        default=XAxis.ROUND.value,
        help="x axis: round, cumulative bytes up + down, or cumulative seconds (default: round)",
    )
    parser.add_argument(
        "--band",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shade the lowest to highest client's value around the clients' curves (default: on)",
    )
    parser.add_argument(
        "--latex",
        action="store_true",
        help="also write table.tex, the final/best table as a booktabs tabular",
    )
    parser.add_argument(
        "--minimize",
        type=names_flag,
        default=frozenset(),
        metavar="NAMES",
        help="named metrics where lower is better, beyond those named like loss or error",
    )
    return parser


def run_labels(run_dirs: Sequence[Path], labels: str | None) -> list[str]:
    """Return one label per run folder: the given ones, else the folders' names."""
    if labels is None:
        return [path.resolve().name or str(path) for path in run_dirs]
    names = [name.strip() for name in labels.split(",")]
    if len(names) != len(run_dirs) or not all(names):
        raise ConfigError(
            f"--labels: {len(run_dirs)} non-empty names needed (one per RUN_DIR), got {labels!r}"
        )
    return names


def default_out(first_run: Path) -> Path:
    """Return report/ in the first run folder, or ./report when that folder is read-only."""
    if os.access(first_run, os.W_OK):
        return first_run / REPORT_FOLDER
    return Path(REPORT_FOLDER)


def unique_stem(stem: str, taken: set[str]) -> str:
    """Return ``stem``, or ``stem-2``, ``stem-3``... if taken (names that differ only in
    characters a file name cannot hold); record it as taken."""
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}"
    taken.add(name)
    return name


def write_report(
    run_dirs: Sequence[Path],
    out: Path,
    labels: Sequence[str],
    options: ReportOptions = ReportOptions(),
) -> list[Path]:
    """Write the figures, summary.md and (with ``latex``) table.tex to ``out``; return the paths."""
    runs = [Run(label, read_metrics(path)) for label, path in zip(labels, run_dirs, strict=True)]
    unknown = sorted(options.minimize - set(named_metrics(runs)))
    if unknown:
        raise ConfigError(f"--minimize: no run has a metric named {', '.join(unknown)}")
    metrics = metrics_present(runs, options.minimize)
    # Imported only now: loading matplotlib may log a first-use notice (building its font
    # cache), which would make a bad-input error more than one line.
    from fedsilo.report.plots import PlotOptions, figure_stem, metric_figure, save_figure

    plot_options = PlotOptions(x=options.x, band=options.band)
    summary = summary_markdown(runs) + "\n" + metrics_section(runs, metrics) + errors_section(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        stems: set[str] = set()
        for metric in metrics:
            figure = metric_figure(runs, metric, plot_options)
            stem = unique_stem(figure_stem(metric), stems)
            paths += save_figure(figure, out / stem, options.formats)
        paths.append(out / "summary.md")
        paths[-1].write_text(summary, encoding="utf-8")
        if options.latex:
            paths.append(out / "table.tex")
            paths[-1].write_text(latex_table(runs, metrics), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the report: {exc.strerror or exc}") from exc
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-report``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        labels = run_labels(args.run_dirs, args.labels)
        out = args.out if args.out is not None else default_out(args.run_dirs[0])
        options = ReportOptions(
            formats=args.format,
            x=XAxis(args.x),
            band=args.band,
            latex=args.latex,
            minimize=args.minimize,
        )
        for path in write_report(args.run_dirs, out, labels, options):
            print(path)
        return 0

    return run_cli(PROG, body)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
