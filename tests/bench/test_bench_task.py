"""The benchmark task: a model of the asked size, and training that touches nothing."""

from __future__ import annotations

import pytest
import torch

from bench.bench_task import MIB, NoopTask
from fedsilo.tasks import Evaluation, Task, TrainConfig, TrainResult, load_task


def test_build_model_holds_a_payload_of_model_mib() -> None:
    model = NoopTask(model_mib=2.5).build_model(seed=0)
    payload = model.state_dict()["payload"]
    assert payload.dtype == torch.float32
    assert payload.numel() * payload.element_size() == int(2.5 * MIB)


def test_train_and_evaluate_leave_the_model_alone() -> None:
    task = NoopTask(model_mib=0.01)
    model = task.build_model(seed=0)
    before = {name: (t.data_ptr(), t._version, t.clone()) for name, t in model.state_dict().items()}
    data = task.load_data(partition=0, seed=0, data_dir=None)
    config = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1, seed=0)
    assert task.train(model, data, config) == TrainResult(examples=1, loss=0.0)
    assert task.evaluate(model, data) == Evaluation(examples=1, loss=0.0, accuracy=0.0)
    for name, tensor in model.state_dict().items():
        pointer, version, values = before[name]
        assert (tensor.data_ptr(), tensor._version) == (pointer, version), name
        assert torch.equal(tensor, values), name


def test_the_daemons_can_load_it_by_name() -> None:
    task = load_task("bench.bench_task:NoopTask", {"model_mib": 0.5})
    assert isinstance(task, Task)


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="model_mib"):
        NoopTask(model_mib=-1)
