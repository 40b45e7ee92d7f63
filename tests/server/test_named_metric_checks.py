"""Named metrics from the network: the rule (count, names, finite, bounded) refuses what breaks
it with one line; the row's value is the example-weighted mean over the clients reporting it."""

from __future__ import annotations

import pytest

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.metrics import ClientEvaluation, with_evaluation
from fedsilo.server.report_checks import ReportError, check_local_metrics


def evaluation(**metrics: float) -> pb.LocalMetrics:
    return pb.LocalMetrics(
        train_loss=0.5,
        evaluation=pb.Evaluation(examples=10, loss=0.3, accuracy=0.9, metrics=metrics),
    )


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"auroc": float("nan")}, "metric 'auroc' is nan, not a finite number"),
        ({"f1": float("inf")}, "metric 'f1' is inf, not a finite number"),
        ({"ece": 1e300}, r"metric ece 1e\+300 is not a finite number in \[-1e\+12"),
        ({"AUROC": 0.5}, "metric name 'AUROC' is not 1-64 characters"),
        ({"1st": 0.5}, "metric name '1st'"),
        ({"a" * 5000: 0.5}, "metric name 'aaaa"),
        ({f"m{i}": 0.5 for i in range(33)}, "33 named metrics, at most 32"),
    ],
)
def test_a_named_metric_breaking_the_rule_is_refused(
    metrics: dict[str, float], message: str
) -> None:
    with pytest.raises(ReportError, match=message) as caught:
        check_local_metrics(evaluation(**metrics), max_examples=100)
    assert len(str(caught.value)) < 300  # a long name is shown truncated


def test_named_metrics_in_the_rule_pass() -> None:
    check_local_metrics(evaluation(**{"auroc": 0.8, "f1.macro": 0.7, "log-loss_2": 3.0}), 100)


def test_the_row_weighs_each_named_metric_by_the_examples_of_the_clients_that_have_it() -> None:
    evals = [
        ClientEvaluation(0, 10, 0.1, 0.9, {"auroc": 0.9, "ece": 0.1}),
        ClientEvaluation(1, 30, 0.2, 0.8, {"auroc": 0.5}),
        ClientEvaluation(2, 60, 0.3, 0.7),
    ]
    row = with_evaluation({"round": 1}, evals)
    assert row["eval_metrics"] == pytest.approx({"auroc": (9 + 15) / 40, "ece": 0.1}, rel=1e-12)
    assert row["eval_clients"][0]["metrics"] == {"auroc": 0.9, "ece": 0.1}
    assert "metrics" not in row["eval_clients"][2]
    assert "eval_metrics" not in with_evaluation({"round": 1}, evals[2:])
