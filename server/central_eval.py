"""Central evaluation: the global model on a server-side evaluation set, after every round.

A Task may offer one (``central_data(data_dir)``, e.g. the official test split that the
federation operator holds); then row r of metrics.jsonl carries ``central_loss``,
``central_accuracy`` and ``central_examples`` of the model after round r, next to the clients'
own held-out evaluation, and ``central_metrics``: the task's named extra metrics (AUROC, ...),
under the rule every evaluation's extras follow (``common/metric_names.py``). The evaluation
runs on the coordinator thread between rounds, through the task's own ``evaluate``, on a model
instance of the server's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import torch
from torch.utils.data import TensorDataset

from fedsilo.common.metric_names import metrics_problem
from fedsilo.tasks import Evaluation, LocalData, Task


class CentralEvaluator:
    """Evaluates global models on the task's central set."""

    def __init__(self, task: Task, model: torch.nn.Module, dataset: Any) -> None:
        self._task = task
        self._model = model
        self._data = LocalData(train=TensorDataset(torch.zeros(0)), test=dataset)

    def row_fields(
        self, state: Mapping[str, torch.Tensor], log: structlog.typing.FilteringBoundLogger
    ) -> dict[str, Any]:
        """Evaluate ``state``; return the metrics-row fields (none if the result is not finite)."""
        self._model.load_state_dict(state)
        with torch.no_grad():
            result: Evaluation = self._task.evaluate(self._model, self._data)
        if not (math.isfinite(result.loss) and math.isfinite(result.accuracy)):
            log.warning("central_evaluation_not_finite", loss=result.loss, accuracy=result.accuracy)
            return {}
        fields: dict[str, Any] = {
            "central_loss": result.loss,
            "central_accuracy": result.accuracy,
            "central_examples": result.examples,
        }
        problem = metrics_problem(result.metrics)
        if problem is not None:
            log.warning("central_metrics_refused", problem=problem)
        elif result.metrics:
            named = result.metrics
            fields["central_metrics"] = {name: float(named[name]) for name in sorted(named)}
        return fields


def central_evaluator(task: Task, seed: int, data_dir: Path | None) -> CentralEvaluator | None:
    """Return the evaluator of ``task``'s central set, or None if the task offers none."""
    offer = getattr(task, "central_data", None)
    if offer is None:
        return None
    dataset = offer(data_dir)
    if dataset is None:
        return None
    return CentralEvaluator(task, task.build_model(seed), dataset)
