"""fl-report and TensorBoardSink on two hand-written run folders, one of them aborted."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedsilo.common.errors import ConfigError
from fedsilo.report.cli import main
from fedsilo.report.metrics_file import Dropout, read_metrics
from fedsilo.server.tensorboard import TensorBoardSink

FL_REPORT = Path(sys.executable).parent / "fl-report"
MIB = 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# report.plots draws 7 x 4.2 inches at 120 dpi.
PNG_SIZE = (840, 504)


def evaluation(*clients: tuple[int, float, float]) -> dict[str, Any]:
    """Return the evaluation fields for clients given as (examples, loss, accuracy)."""
    total = sum(examples for examples, _, _ in clients)
    return {
        "eval_examples": total,
        "eval_loss": sum(n * loss for n, loss, _ in clients) / total,
        "eval_accuracy": sum(n * acc for n, _, acc in clients) / total,
        "eval_clients": [
            {"client_id": cid, "examples": n, "loss": loss, "accuracy": acc}
            for cid, (n, loss, acc) in enumerate(clients)
        ],
    }


def training(
    number: int,
    selected: list[int],
    bytes_down: int,
    bytes_up: int,
    seconds: float,
    *,
    dropped: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """Return the training fields of round ``number``, as server.metrics.round_row writes them."""
    gone = {d["client_id"] for d in dropped}
    participants = [cid for cid in selected if cid not in gone]
    return {
        "round": number,
        "time": f"2026-11-27T10:0{number}:00.000+00:00",
        "selected": selected,
        "participants": participants,
        "dropped": list(dropped),
        "train_loss": 2.0 / number,
        "train_examples": 200 * len(participants),
        "bytes_down": bytes_down,
        "bytes_up": bytes_up,
        "seconds": seconds,
        "clients": [
            {
                "client_id": cid,
                "name": f"org-{cid}",
                "train_examples": 200,
                "train_loss": 2.0 / number,
                "train_seconds": seconds / 2,
                "bytes_down": bytes_down // len(selected),
                "bytes_up": bytes_up // len(participants),
                "seconds": seconds,
            }
            for cid in participants
        ],
    }


def row_zero(*clients: tuple[int, float, float]) -> dict[str, Any]:
    """Return row 0: the initial model's evaluation only."""
    return {"round": 0, "time": "2026-11-27T10:00:00.000+00:00", **evaluation(*clients)}


# Two clients, three full rounds: accuracy peaks in round 2.
FEDAVG_ROWS = [
    row_zero((50, 2.2, 0.3), (50, 2.4, 0.1)),
    {**training(1, [0, 1], 2 * MIB, MIB, 1.5), **evaluation((50, 1.0, 0.7), (50, 1.4, 0.5))},
    {**training(2, [0, 1], 2 * MIB, MIB, 2.0), **evaluation((50, 0.6, 0.9), (50, 0.8, 0.7))},
    {**training(3, [0, 1], 2 * MIB, MIB, 2.5), **evaluation((50, 0.5, 0.8), (50, 0.8, 0.7))},
]

STALLED = {"client_id": 1, "reason": "no progress", "phase": "training", "after_seconds": 30.2}
LOST = {"client_id": 1, "reason": "stream broke", "phase": "download", "after_seconds": 0.4}
# Three clients, client 1 drops twice, and the job aborts after round 3: no evaluation there.
ABORTED_ROWS = [
    row_zero((20, 2.5, 0.1), (40, 2.5, 0.1), (40, 2.5, 0.1)),
    {
        **training(1, [0, 1, 2], 3 * MIB, MIB + MIB // 2, 3.0),
        **evaluation((20, 1.6, 0.5), (40, 1.6, 0.2), (40, 1.6, 0.55)),
    },
    {
        **training(2, [0, 1, 2], 3 * MIB, MIB, 31.0, dropped=(STALLED,)),
        **evaluation((20, 1.1, 0.75), (40, 1.1, 0.4), (40, 1.1, 0.6)),
    },
    training(3, [0, 1, 2], 2 * MIB, MIB, 30.5, dropped=(LOST,)),
]

HEADER = (
    "| run | rounds | final accuracy | best accuracy (round) | final loss | mean participants "
    "| dropouts | MiB down | MiB up | seconds |"
)
FEDAVG_LINE = "| fedavg | 3 | 0.7500 | 0.8000 (r2) | 0.6500 | 2.00 | 0 | 6.000 | 3.000 | 6.00 |"
ABORTED_LINE = (
    "| krum | 3 | 0.5500 (r2) | 0.5500 (r2) | 1.1000 (r2) | 2.33 | 2 | 8.000 | 3.500 | 64.50 |"
)


def write_run(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as ``folder``/metrics.jsonl the way MetricsLog does."""
    folder.mkdir(parents=True)
    lines = (json.dumps(row, sort_keys=True, allow_nan=False) + "\n" for row in rows)
    (folder / "metrics.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_run(tmp_path / "job-1", FEDAVG_ROWS),
        write_run(tmp_path / "job-2", ABORTED_ROWS),
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == PNG_SIZE
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes: nothing drawn?"


def run_fl_report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FL_REPORT), *map(str, args)], check=False, capture_output=True, text=True, timeout=120
    )


def test_reader_gives_typed_rows_and_tolerates_missing_fields(runs: tuple[Path, Path]) -> None:
    rows = read_metrics(runs[1])
    assert [row.round for row in rows] == [0, 1, 2, 3]
    assert rows[0].participants is None and rows[0].bytes_down is None
    assert rows[2].eval_accuracy == pytest.approx(0.55)
    assert [c.accuracy for c in rows[2].eval_clients] == [0.75, 0.4, 0.6]
    assert rows[2].dropped == (Dropout(1, "no progress", "training", 30.2),)
    assert rows[3].eval_accuracy is None and rows[3].eval_clients == ()
    assert rows[3].participants == (0, 2)


def test_fl_report_writes_plots_and_summary_of_both_runs(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_fl_report(*runs, "--out", out, "--labels", "fedavg,krum")
    assert result.returncode == 0, result.stderr
    written = [out / "accuracy.png", out / "loss.png", out / "summary.md"]
    assert result.stdout.splitlines() == [str(path) for path in written]
    assert_png(written[0])
    assert_png(written[1])
    lines = written[2].read_text(encoding="utf-8").splitlines()
    assert lines[2] == HEADER
    assert lines[4:6] == [FEDAVG_LINE, ABORTED_LINE]


def test_default_out_is_report_folder_of_first_run_labelled_by_folder(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(runs[0]), str(runs[1])]) == 0
    report = runs[0] / "report"
    assert capsys.readouterr().out.splitlines() == [
        str(report / name) for name in ("accuracy.png", "loss.png", "summary.md")
    ]
    summary = (report / "summary.md").read_text(encoding="utf-8")
    assert FEDAVG_LINE.replace("fedavg", "job-1") in summary.splitlines()
    assert ABORTED_LINE.replace("krum", "job-2") in summary.splitlines()


def test_report_is_deterministic(runs: tuple[Path, Path], tmp_path: Path) -> None:
    outputs = []
    for attempt in ("a", "b"):
        assert main([*map(str, runs), "--out", str(tmp_path / attempt)]) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / attempt).iterdir())})
    assert outputs[0] == outputs[1]


def test_a_torn_line_exits_2_with_one_line_naming_file_and_line(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    metrics = runs[1] / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    metrics.write_text("".join(lines[:2]) + lines[2][:40], encoding="utf-8")
    result = run_fl_report(*runs, "--out", tmp_path / "out")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"fl-report: error: {metrics}:3: not JSON")
    assert not (tmp_path / "out").exists()


def test_a_field_of_the_wrong_type_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**FEDAVG_ROWS[1], "eval_accuracy": "high"}
    run = write_run(tmp_path / "bad", [FEDAVG_ROWS[0], bad])
    assert main([str(run)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line
        == f"fl-report: error: {run / 'metrics.jsonl'}:2: eval_accuracy is 'high', not a number"
    )


def test_a_folder_without_metrics_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.jsonl: no such file"):
        read_metrics(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "missing/metrics.jsonl: no such file" in line


def test_labels_must_match_the_run_folders(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*map(str, runs), "--labels", "only-one"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_tensorboard_sink_writes_the_scalars_of_each_row(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path)
    for row in ABORTED_ROWS:
        sink.append(row)
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        return [(event.step, event.value) for event in events.Scalars(tag)]

    assert series("eval/accuracy") == [
        (0, pytest.approx(0.1)),
        (1, pytest.approx(0.4)),
        (2, pytest.approx(0.55)),
    ]
    assert series("eval/loss") == [
        (0, pytest.approx(2.5)),
        (1, pytest.approx(1.6)),
        (2, pytest.approx(1.1)),
    ]
    assert series("train/loss") == [(n, pytest.approx(2.0 / n)) for n in (1, 2, 3)]
    assert series("bytes/down") == [(1, 3 * MIB), (2, 3 * MIB), (3, 2 * MIB)]
    assert series("bytes/up") == [(1, 1.5 * MIB), (2, MIB), (3, MIB)]
    assert series("round/seconds") == [(1, 3.0), (2, 31.0), (3, 30.5)]
    assert series("round/participants") == [(1, 3), (2, 2), (3, 2)]


def test_tensorboard_sink_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail as it does when tensorboard is not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'fedsilo\[tensorboard\]'"):
        TensorBoardSink(tmp_path)
    assert not (tmp_path / "tensorboard").exists()
