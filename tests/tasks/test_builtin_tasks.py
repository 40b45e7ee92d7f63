"""The built-in dataset tasks build, load partition 0, train an epoch on a slice, and evaluate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from fedsilo.common.errors import ConfigError, TaskLoadError
from fedsilo.tasks import BUILTIN_TASKS, LocalData, TrainConfig, load_task
from fedsilo.tasks.datasets.fmnist import DEFAULT_DIR, files_present

needs_fmnist = pytest.mark.skipif(
    not files_present(),
    reason=f"Fashion-MNIST is not in {DEFAULT_DIR}: sudo apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def shakespeare_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("shakespeare-cache"))


def options_for(name: str, cache: str) -> dict[str, object]:
    return {"cache_dir": cache} if name == "shakespeare" else {}


def check_round(name: str, options: dict[str, object], slice_size: int) -> LocalData:
    task = load_task(name, options)
    model = task.build_model(7)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), task.build_model(7).state_dict().values(), strict=True
        )
    )
    data = task.load_data(0, seed=1, data_dir=None)
    assert data.train_examples > 0 and data.test_examples > 0
    small = LocalData(
        train=Subset(data.train, range(min(slice_size, data.train_examples))),
        test=Subset(data.test, range(min(slice_size, data.test_examples))),
    )
    before = copy.deepcopy(model.state_dict())
    result = task.train(model, small, TrainConfig(1, 16, 0.05, seed=3))
    assert result.examples == len(small.train)  # type: ignore[arg-type]
    assert result.loss > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    evaluation = task.evaluate(model, small)
    assert evaluation.examples == len(small.test)  # type: ignore[arg-type]
    assert 0.0 <= evaluation.accuracy <= 1.0
    return data


def test_builtin_tasks_are_registered():
    assert {"synthetic", "shakespeare", "fmnist", "digits"} <= set(BUILTIN_TASKS)


def test_digits_task_runs_a_round():
    data = check_round("digits", {}, 64)
    first = data.train[0]
    assert first[0].shape == (64,) and first[1].dtype == torch.int64


@needs_fmnist
@pytest.mark.parametrize(
    "options",
    [{}, {"partition": "iid", "clients": 20}, {"partition": "labels", "labels": 2.0}],
    ids=["dirichlet", "iid", "labels"],
)
def test_fmnist_task_runs_a_round(options):
    data = check_round("fmnist", options, 64)
    assert data.train[0][0].shape == (1, 28, 28)
    if options.get("partition") == "iid":
        assert data.train_examples + data.test_examples == 60_000 // 20


def test_shakespeare_task_runs_a_round(shakespeare_cache):
    data = check_round("shakespeare", {"cache_dir": shakespeare_cache}, 32)
    inputs, target = data.train[0]
    assert inputs.shape == (80,) and target.shape == ()
    total = data.train_examples + data.test_examples
    assert data.train_examples == int(total * 0.8)


def test_shakespeare_split_is_by_time(shakespeare_cache):
    data = load_task("shakespeare", {"cache_dir": shakespeare_cache}).load_data(3, 0, None)
    # the first test window continues the text right where training stopped
    last_train, next_target = data.train[data.train_examples - 1], data.test[0]
    assert torch.equal(last_train[0][1:], next_target[0][:-1])
    assert last_train[1] == next_target[0][-1]


@pytest.mark.parametrize("name", ["digits", "shakespeare"])
def test_partitions_are_deterministic_and_distinct(name, shakespeare_cache):
    task = load_task(name, options_for(name, shakespeare_cache))
    first, again = task.load_data(1, 5, None), task.load_data(1, 5, None)
    other = task.load_data(2, 5, None)
    assert torch.equal(first.train[:][1], again.train[:][1])
    assert first.train_examples != other.train_examples or not torch.equal(
        first.train[:][1], other.train[:][1]
    )


@pytest.mark.parametrize(
    ("name", "partition"), [("digits", 10), ("shakespeare", 1158), ("shakespeare", 10_000)]
)
def test_partition_out_of_range_is_a_config_error(name, partition, shakespeare_cache):
    task = load_task(name, options_for(name, shakespeare_cache))
    with pytest.raises(ConfigError, match="out of range"):
        task.load_data(partition, 0, None)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("digits", {"partition": "shards"}),
        ("digits", {"partition": "iid", "beta": 0.5}),
        ("fmnist", {"clients": 2.5}),
        ("shakespeare", {"min_chars": 1}),
        ("shakespeare", {"max_clients": 5}),
    ],
)
def test_bad_options_are_a_task_load_error(name, options):
    with pytest.raises(TaskLoadError, match="rejected its options"):
        load_task(name, options)


def test_fmnist_from_a_folder_without_files_says_how_to_install(tmp_path: Path):
    task = load_task("fmnist")
    with pytest.raises(TaskLoadError, match="make datasets"):
        task.load_data(0, 0, tmp_path)
