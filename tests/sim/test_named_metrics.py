"""A user's task with named metrics (AUROC, sensitivity): each client's values and their
example-weighted mean in metrics.jsonl, the central set's too, TensorBoard tags, fl-report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fedsilo.report.cli import main as report_main
from fedsilo.server.tensorboard import scalars
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from tests.integration.user_task import AurocTinyTask

TASK = "tests.integration.user_task:AurocTinyTask"


def pairwise_auroc(scores: list[float], positive: list[bool]) -> float:
    """AUROC by its definition: P(score of a positive > score of a negative), ties half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("auroc") / "run"
    config = SimConfig(
        task=TASK, clients=3, rounds=2, threads=1, workers=0, learning_rate=0.05, seed=2, out=out
    )
    assert simulate(config).outcome.finished
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_rows_named_metrics_are_the_example_weighted_mean_of_the_clients(run: Path) -> None:
    for row in rows(run):
        clients = row["eval_clients"]
        assert all(set(c["metrics"]) == {"auroc", "sensitivity"} for c in clients)
        for name in ("auroc", "sensitivity"):
            want = sum(c["metrics"][name] * c["examples"] for c in clients) / sum(
                c["examples"] for c in clients
            )
            assert row["eval_metrics"][name] == pytest.approx(want, rel=1e-12)
            assert 0 <= row["eval_metrics"][name] <= 1


def test_the_central_auroc_of_the_final_model_is_the_one_computed_by_hand(run: Path) -> None:
    task = AurocTinyTask()
    model = task.build_model(seed=0)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    x, y = task.central_data(None).tensors
    with torch.no_grad():
        scores = torch.softmax(model(x).double(), dim=1)[:, 1].tolist()
    want = pairwise_auroc(scores, [bool(v) for v in y.tolist()])
    assert rows(run)[-1]["central_metrics"]["auroc"] == pytest.approx(want, rel=1e-12)


def test_tensorboard_gets_a_tag_per_named_metric(run: Path) -> None:
    tags = scalars(rows(run)[-1])
    assert {"eval/auroc", "eval/sensitivity", "central/auroc"} <= set(tags)
    assert tags["central/auroc"] == rows(run)[-1]["central_metrics"]["auroc"]


def test_fl_report_plots_and_tabulates_auroc(run: Path, tmp_path: Path) -> None:
    assert report_main([str(run), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    final = rows(run)[-1]
    # One run: its final value is the column's best, in bold.
    assert f"| auroc | clients | run | **{final['eval_metrics']['auroc']:.4f}** | 2 |" in summary
    assert f"| auroc | central | run | **{final['central_metrics']['auroc']:.4f}** | 2 |" in summary
    assert (tmp_path / "report" / "metric-auroc.png").stat().st_size > 0


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
def test_tensorboard_events_hold_the_named_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = SimConfig(
        task=TASK, clients=2, rounds=1, threads=1, workers=0, tensorboard=True, out=out
    )
    simulate(config)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"eval/auroc", "central/auroc"} <= set(events.Tags()["scalars"])
