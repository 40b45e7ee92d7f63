"""A task's server-side evaluation set: every row carries the global model's central evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.server.central_eval import central_evaluator
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.tasks import load_task
from fedsilo.tasks.datasets.fmnist import files_present
from fedsilo.tasks.training import evaluate_classifier
from tests.integration.user_task import CentralTinyTask


def test_every_row_carries_the_central_evaluation_of_its_model(tmp_path: Path) -> None:
    config = SimConfig(
        task="tests.integration.user_task:CentralTinyTask",
        clients=3,
        rounds=3,
        threads=1,
        workers=0,
        out=tmp_path / "run",
    )
    assert simulate(config).outcome.finished
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert all(row["central_examples"] == 200 for row in rows)
    task = CentralTinyTask()
    model = task.build_model(0)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    by_hand = evaluate_classifier(model, task.central_data(None))
    assert rows[-1]["central_accuracy"] == by_hand.accuracy
    assert rows[-1]["central_loss"] == pytest.approx(by_hand.loss, rel=1e-12)
    assert rows[0]["central_accuracy"] != rows[-1]["central_accuracy"]  # it learned


def test_a_task_without_a_central_set_has_no_evaluator() -> None:
    assert central_evaluator(load_task("synthetic"), 0, None) is None


@pytest.mark.skipif(not files_present(), reason="Fashion-MNIST is not installed (make datasets)")
def test_fmnist_evaluates_centrally_on_the_official_test_set() -> None:
    evaluator = central_evaluator(load_task("fmnist"), 0, None)
    assert evaluator is not None
    fields = evaluator.row_fields(
        load_task("fmnist").build_model(0).state_dict(), structlog.get_logger()
    )
    assert fields["central_examples"] == 10_000
    assert 0.0 <= fields["central_accuracy"] <= 0.3  # an untrained model: about chance
