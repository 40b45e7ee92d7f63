"""``fl-report``: plots and a summary table comparing the metrics.jsonl of run folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedsilo.common.cli import ArgumentParser, exit_process, run_cli
from fedsilo.common.errors import ConfigError
from fedsilo.report.metrics_file import read_metrics
from fedsilo.report.summary import Run, summary_markdown

PROG = "fl-report"
REPORT_FOLDER = "report"


def build_parser() -> ArgumentParser:
    """Return the fl-report argument parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Plot eval accuracy and loss per round of one or more run folders, "
        "overlaid, and tabulate them in summary.md.",
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


def write_report(run_dirs: Sequence[Path], out: Path, labels: Sequence[str]) -> list[Path]:
    """Write accuracy.png, loss.png and summary.md for the runs to ``out``; return the paths."""
    runs = [Run(label, read_metrics(path)) for label, path in zip(labels, run_dirs, strict=True)]
    # Imported only now: loading matplotlib may log a first-use notice (building its font
    # cache), which would make a bad-input error more than one line.
    from fedsilo.report.plots import plot_accuracy, plot_loss

    paths = [out / "accuracy.png", out / "loss.png", out / "summary.md"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        plot_accuracy(runs, paths[0])
        plot_loss(runs, paths[1])
        paths[2].write_text(summary_markdown(runs), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the report: {exc.strerror or exc}") from exc
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-report``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        labels = run_labels(args.run_dirs, args.labels)
        out = args.out if args.out is not None else default_out(args.run_dirs[0])
        for path in write_report(args.run_dirs, out, labels):
            print(path)
        return 0

    return run_cli(PROG, body)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
