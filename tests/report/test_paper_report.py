"""fl-report's paper outputs: vector figures, run styles, x axes, every metric, final/best tables.

Two hand-written runs. ``fedavg`` has everything a current server writes: the clients' and the
central evaluation, named metrics (auroc on both, ece on the clients' only), epsilon, and one
client whose evaluation failed. ``scaffold`` has the central evaluation and auroc, no ece and no
epsilon. Expected table cells are read off the rows below by hand.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from fedsilo.report.cli import main
from fedsilo.report.metrics_file import read_metrics
from fedsilo.report.plots import PlotOptions, metric_figure, run_styles
from fedsilo.report.series import ACCURACY, EPSILON, Kind, Metric, XAxis, lower_is_better
from fedsilo.report.summary import Run

FL_REPORT = Path(sys.executable).parent / "fl-report"
MIB = 1024 * 1024
SVG = "{http://www.w3.org/2000/svg}"


def row(
    number: int,
    values: tuple[float, float],
    central: tuple[float, float] | None,
    named: tuple[dict[str, float], dict[str, float]],
    clients: list[float],
) -> dict[str, Any]:
    """Return one row: (accuracy, loss) of the clients' and of the central evaluation, the
    named metrics of both, and each client's accuracy (10 examples each)."""
    acc, loss = values
    metrics, central_metrics = named
    out: dict[str, Any] = {
        "round": number,
        "eval_accuracy": acc,
        "eval_loss": loss,
        "eval_examples": 10 * len(clients),
        "eval_metrics": metrics,
        "eval_clients": [
            {"client_id": cid, "examples": 10, "loss": loss, "accuracy": a, "metrics": metrics}
            for cid, a in enumerate(clients)
        ],
    }
    if central is not None:
        out |= {"central_accuracy": central[0], "central_loss": central[1]}
        out |= {"central_examples": 1000, "central_metrics": central_metrics}
    return out


def cost(down: float, up: float, seconds: float, epsilon: float | None) -> dict[str, Any]:
    """Return a round's traffic (in MiB), time and (when given) epsilon."""
    out: dict[str, Any] = {"bytes_down": int(down * MIB), "bytes_up": int(up * MIB)}
    out |= {"seconds": seconds, "participants": [0, 1, 2], "selected": [0, 1, 2]}
    return out if epsilon is None else out | {"epsilon": epsilon}


FAILED = {"client_id": 2, "error": "evaluation failed: out of memory"}
# Cumulative traffic 0, 3, 6.5, 9 MiB; cumulative seconds 0, 1.5, 3.5, 6.0.
FEDAVG = [
    row(0, (0.10, 2.30), (0.12, 2.25), ({"auroc": 0.50, "ece": 0.30}, {"auroc": 0.52}), [0.1] * 3),
    row(1, (0.60, 1.20), (0.65, 1.10), ({"auroc": 0.80, "ece": 0.20}, {"auroc": 0.82}), [0.5, 0.7])
    | cost(2, 1, 1.5, 0.5),
    row(2, (0.75, 0.90), (0.78, 0.85), ({"auroc": 0.91, "ece": 0.10}, {"auroc": 0.90}), [0.6, 0.85])
    | cost(2, 1.5, 2.0, 0.8),
    row(
        3, (0.70, 0.95), (0.80, 0.80), ({"auroc": 0.88, "ece": 0.15}, {"auroc": 0.93}), [0.65, 0.75]
    )
    | cost(2, 0.5, 2.5, 1.1),
]
FEDAVG[3]["eval_clients"].append(FAILED)
SCAFFOLD = [
    row(0, (0.10, 2.30), (0.12, 2.25), ({"auroc": 0.50}, {"auroc": 0.52}), [0.1] * 3),
    row(1, (0.55, 1.30), (0.70, 1.00), ({"auroc": 0.85}, {"auroc": 0.80}), [0.5, 0.55, 0.6])
    | cost(5, 5, 1.0, None),
    row(2, (0.72, 1.00), (0.74, 0.95), ({"auroc": 0.89}, {"auroc": 0.95}), [0.7, 0.72, 0.74])
    | cost(5, 5, 1.0, None),
]

# Final = last row that has it; best = max (min for loss, ece); bold = best run of the column.
TABLE_MD = """\
| metric | data | run | final | round | best | round |
|---|---|---|---:|---:|---:|---:|
| accuracy | clients | fedavg | 0.7000 | 3 | **0.7500** | 2 |
| accuracy | clients | scaffold | **0.7200** | 2 | 0.7200 | 2 |
| accuracy | central | fedavg | **0.8000** | 3 | **0.8000** | 3 |
| accuracy | central | scaffold | 0.7400 | 2 | 0.7400 | 2 |
| loss | clients | fedavg | **0.9500** | 3 | **0.9000** | 2 |
| loss | clients | scaffold | 1.0000 | 2 | 1.0000 | 2 |
| loss | central | fedavg | **0.8000** | 3 | **0.8000** | 3 |
| loss | central | scaffold | 0.9500 | 2 | 0.9500 | 2 |
| auroc | clients | fedavg | 0.8800 | 3 | **0.9100** | 2 |
| auroc | clients | scaffold | **0.8900** | 2 | 0.8900 | 2 |
| auroc | central | fedavg | 0.9300 | 3 | 0.9300 | 3 |
| auroc | central | scaffold | **0.9500** | 2 | **0.9500** | 2 |
| ece | clients | fedavg | **0.1500** | 3 | **0.1000** | 2 |
| ece | clients | scaffold | — | — | — | — |
| epsilon | accountant | fedavg | **1.1000** | 3 | — | — |
| epsilon | accountant | scaffold | — | — | — | — |
"""
TEX_LINES = [
    r"\toprule",
    r"Metric & Data & Run & Final & Round & Best & Round \\",
    r"\midrule",
    r"accuracy & clients & fedavg & 0.7000 & 3 & \textbf{0.7500} & 2 \\",
    r" &  & scaffold & \textbf{0.7200} & 2 & 0.7200 & 2 \\",
    r"auroc & central & fedavg & 0.9300 & 3 & 0.9300 & 3 \\",
    r" &  & scaffold & \textbf{0.9500} & 2 & \textbf{0.9500} & 2 \\",
    r"ece & clients & fedavg & \textbf{0.1500} & 3 & \textbf{0.1000} & 2 \\",
    r" &  & scaffold & -- & -- & -- & -- \\",
    r"epsilon & accountant & fedavg & \textbf{1.1000} & 3 & -- & -- \\",
    r"\bottomrule",
]
STEMS = ("accuracy", "loss", "metric-auroc", "metric-ece", "epsilon")


def write_run(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    lines = (json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    (folder / "metrics.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return write_run(tmp_path / "fedavg", FEDAVG), write_run(tmp_path / "scaffold", SCAFFOLD)


def loaded(*folders: Path) -> list[Run]:
    return [Run(folder.name, read_metrics(folder)) for folder in folders]


def fl_report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FL_REPORT), *map(str, args)], check=False, capture_output=True, text=True, timeout=120
    )


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def run_lines(figure: Figure, panel: int) -> dict[str, Line2D]:
    return {str(line.get_label()): line for line in figure.axes[panel].get_lines()}


def test_fl_report_writes_every_metric_in_every_format_and_both_tables(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = fl_report(*runs, "--out", out, "--format", "png,pdf,svg", "--latex")
    assert result.returncode == 0, result.stderr
    figures = [out / f"{stem}.{fmt}" for stem in STEMS for fmt in ("png", "pdf", "svg")]
    assert result.stdout.splitlines() == [
        str(p) for p in [*figures, out / "summary.md", out / "table.tex"]
    ]
    for stem in STEMS:
        with Image.open(out / f"{stem}.png") as image:
            image.verify()
            assert (image.format, image.size) == ("PNG", (840, 504))
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
        assert b"/Type3" not in pdf  # fonts embedded as TrueType, as journals ask
        texts = svg_texts(out / f"{stem}.svg")
        assert "fedavg" in texts
        assert ("scaffold" in texts) is (stem not in ("metric-ece", "epsilon"))
    accuracy = svg_texts(out / "accuracy.svg")
    assert "clients' held-out data" in accuracy and "central evaluation set" in accuracy
    assert "ε" in svg_texts(out / "epsilon.svg")

    summary = (out / "summary.md").read_text(encoding="utf-8")
    section = summary.split("## Final and best per metric\n\n", 1)[1]
    assert section.startswith(TABLE_MD)
    assert "- fedavg: 1 (r3 client 2: evaluation failed: out of memory)" in summary.splitlines()
    tex = (out / "table.tex").read_text(encoding="utf-8").splitlines()
    assert all(line in tex for line in TEX_LINES), "\n".join(tex)
    assert tex.count(r"\midrule") == 8  # one per metric and source


def test_the_default_is_png_of_every_metric_and_the_markdown_table(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*map(str, runs), "--out", str(tmp_path / "out")]) == 0
    names = [Path(line).name for line in capsys.readouterr().out.splitlines()]
    assert names == [f"{stem}.png" for stem in STEMS] + ["summary.md"]


def test_vector_outputs_are_deterministic(runs: tuple[Path, Path], tmp_path: Path) -> None:
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        assert main([*map(str, runs), "--out", str(out), "--format", "pdf,svg", "--latex"]) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert len(outputs[0]) == 2 * len(STEMS) + 2
    assert outputs[0] == outputs[1]


def test_x_bytes_is_cumulative_traffic_and_seconds_cumulative_time(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    report = loaded(*runs)
    by_bytes = metric_figure(report, ACCURACY, PlotOptions(x=XAxis.BYTES))
    # fedavg: (2 + 1), (2 + 1.5), (2 + 0.5) MiB per round; scaffold 10 MiB per round.
    assert list(run_lines(by_bytes, 0)["fedavg"].get_xdata()) == [0.0, 3.0, 6.5, 9.0]
    assert list(run_lines(by_bytes, 1)["scaffold"].get_xdata()) == [0.0, 10.0, 20.0]
    assert by_bytes.axes[0].get_xlabel() == "cumulative traffic, up + down (MiB)"
    by_time = metric_figure(report, ACCURACY, PlotOptions(x=XAxis.SECONDS))
    assert list(run_lines(by_time, 0)["fedavg"].get_xdata()) == [0.0, 1.5, 3.5, 6.0]
    by_round = metric_figure(report, ACCURACY, PlotOptions())
    assert list(run_lines(by_round, 0)["fedavg"].get_xdata()) == [0.0, 1.0, 2.0, 3.0]

    out = tmp_path / "out"
    assert main([*map(str, runs), "--out", str(out), "--x", "bytes", "--format", "svg"]) == 0
    assert "cumulative traffic, up + down (MiB)" in svg_texts(out / "loss.svg")


def test_each_run_keeps_one_style_distinct_in_black_and_white(runs: tuple[Path, Path]) -> None:
    third = Run("fedprox", read_metrics(runs[1]))
    figure = metric_figure([*loaded(*runs), third], ACCURACY, PlotOptions())
    clients, central = run_lines(figure, 0), run_lines(figure, 1)
    assert list(clients) == list(central) == ["fedavg", "scaffold", "fedprox"]
    looks = [
        (line.get_linestyle(), line.get_marker(), line.get_color()) for line in clients.values()
    ]
    assert looks == [(c.get_linestyle(), c.get_marker(), c.get_color()) for c in central.values()]
    assert len({(style, marker) for style, marker, _ in looks}) == 3
    assert len({marker for _, marker, _ in looks}) == 3
    # Rec. 709 luma of each colour: greyscale keeps them apart.
    grey = sorted(
        0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in (to_rgb(c) for *_, c in looks)
    )
    assert min(b - a for a, b in itertools.pairwise(grey)) > 0.15
    styles = run_styles(28)
    assert len({(s.linestyle, s.marker) for s in styles}) == 28


def test_the_legend_sits_outside_every_panel(runs: tuple[Path, Path]) -> None:
    figure = metric_figure(loaded(*runs), ACCURACY, PlotOptions())
    assert [axes.get_legend() for axes in figure.axes] == [None, None]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["fedavg", "scaffold"]
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    figure.draw(renderer)
    box = legend.get_window_extent(renderer)
    for axes in figure.axes:  # the axes with their tick labels and axis labels
        assert not box.overlaps(axes.get_tightbbox(renderer))


def test_the_client_band_spans_the_clients_values_and_can_be_turned_off(
    runs: tuple[Path, Path],
) -> None:
    report = loaded(*runs)
    figure = metric_figure(report, ACCURACY, PlotOptions(band=True))
    clients, central = figure.axes
    assert len(clients.collections) == 2 and len(central.collections) == 0
    fedavg_band = clients.collections[0].get_paths()[0].vertices
    # fedavg's clients: lowest 0.1 (round 0), highest 0.85 (round 2); the failed client adds none.
    assert (fedavg_band[:, 1].min(), fedavg_band[:, 1].max()) == pytest.approx((0.1, 0.85))
    plain = metric_figure(report, ACCURACY, PlotOptions(band=False))
    assert [len(axes.collections) for axes in plain.axes] == [0, 0]
    assert "band" not in plain.get_suptitle() and "band" in figure.get_suptitle()


def test_central_auroc_and_epsilon_are_plotted_with_their_values(runs: tuple[Path, Path]) -> None:
    report = loaded(*runs)
    auroc = metric_figure(report, Metric(Kind.NAMED, "auroc", False), PlotOptions())
    assert [axes.get_title() for axes in auroc.axes] == [
        "clients' held-out data",
        "central evaluation set",
    ]
    assert list(run_lines(auroc, 1)["scaffold"].get_ydata()) == [0.52, 0.80, 0.95]
    epsilon = metric_figure(report, EPSILON, PlotOptions())
    assert len(epsilon.axes) == 1
    assert list(run_lines(epsilon, 0)) == ["fedavg"]
    assert list(run_lines(epsilon, 0)["fedavg"].get_ydata()) == [0.5, 0.8, 1.1]


def test_names_like_loss_or_error_are_lower_is_better() -> None:
    assert not lower_is_better("auroc") and not lower_is_better("sensitivity")
    assert lower_is_better("ece") and lower_is_better("calibration_error")
    assert lower_is_better("log-loss") and not lower_is_better("glossary")
    assert lower_is_better("false_alarms", {"false_alarms"})


def test_minimize_turns_the_best_cell_to_the_lowest(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main([*map(str, runs), "--out", str(out), "--minimize", "auroc"]) == 0
    summary = (out / "summary.md").read_text(encoding="utf-8").splitlines()
    assert "| auroc | clients | fedavg | **0.8800** | 3 | **0.5000** | 0 |" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "png,gif"], "argument --format: 'png,gif': a comma-separated list"),
        (["--x", "weeks"], "argument --x: invalid choice: 'weeks'"),
        (["--minimize", "aurco"], "--minimize: no run has a metric named aurco"),
    ],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(
    runs: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    result = fl_report(*runs, "--out", tmp_path / "out", *args)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("fl-report: error: ") and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_named_metric_that_is_not_a_number_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**FEDAVG[1], "central_metrics": {"auroc": "high"}}
    run = write_run(tmp_path / "bad", [FEDAVG[0], bad])
    assert main([str(run)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("metrics.jsonl:2: central_metrics.auroc is 'high', not a number")


def test_metric_names_unsafe_in_file_names_get_distinct_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = ({"f1 score": 0.5, "f1/score": 0.6, "../x": 0.7}, {})
    run = write_run(tmp_path / "run", [row(0, (0.1, 2.3), None, named, [0.1])])
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    names = [Path(line).name for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "accuracy.png",
        "loss.png",
        "metric-x.png",
        "metric-f1_score.png",
        "metric-f1_score-2.png",
        "summary.md",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
