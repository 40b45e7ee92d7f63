"""What the server does with a silo's reported record-level epsilon: check it, then write it."""

from __future__ import annotations

import math

import pytest

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server import messages, metrics
from fedsilo.server.report_checks import ReportError, check_local_metrics


@pytest.mark.parametrize("epsilon", [math.nan, math.inf, -0.5, 1e10])
def test_an_epsilon_that_is_not_a_finite_number_in_range_refuses_the_update(epsilon):
    with pytest.raises(ReportError, match="dp_epsilon"):
        check_local_metrics(pb.LocalMetrics(train_loss=1.0, dp_epsilon=epsilon), 100)


def test_a_reported_epsilon_is_written_per_client_and_absent_without_dp():
    check_local_metrics(pb.LocalMetrics(train_loss=1.0, dp_epsilon=2.5), 100)
    assert messages.dp_epsilon(pb.LocalMetrics(dp_epsilon=0.0)) == 0.0  # present, if zero
    assert messages.dp_epsilon(pb.LocalMetrics()) is None

    def report(cid: int, epsilon: float | None) -> metrics.ClientReport:
        return metrics.ClientReport(cid, f"org-{cid}", 10, 1.0, 0.5, 100, 100, 1.0, epsilon)

    row = metrics.round_row(
        1,
        selected=[0, 1],
        reports={0: report(0, 2.5), 1: report(1, None)},
        dropped={},
        bytes_down={0: 100, 1: 100},
        seconds=1.0,
    )
    assert row["clients"][0]["dp_epsilon"] == 2.5
    assert "dp_epsilon" not in row["clients"][1]
