"""The built-in Synthetic(alpha, beta) task is a pure function of its seeds."""

from __future__ import annotations

import copy

import pytest
import torch

from fedsilo.tasks import TrainConfig
from fedsilo.tasks.builtin.synthetic import CLASSES, FEATURES, SyntheticTask


def tensors_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.tensors[0], dataset.tensors[1]


def same_data(first, second) -> bool:
    return all(
        a.shape == b.shape and torch.equal(a, b)
        for split in ("train", "test")
        for a, b in zip(
            tensors_of(getattr(first, split)), tensors_of(getattr(second, split)), strict=True
        )
    )


def test_load_data_is_deterministic_for_the_same_seed_and_partition():
    task = SyntheticTask()
    assert same_data(task.load_data(3, seed=11, data_dir=None), task.load_data(3, 11, None))
    # a fresh task instance and an unrelated use of the global RNG change nothing
    torch.manual_seed(12345)
    torch.rand(10)
    assert same_data(SyntheticTask().load_data(3, 11, None), task.load_data(3, 11, None))


def test_load_data_differs_across_partitions_and_seeds():
    task = SyntheticTask()
    base = task.load_data(0, seed=11, data_dir=None)
    assert not same_data(base, task.load_data(1, seed=11, data_dir=None))
    assert not same_data(base, task.load_data(0, seed=12, data_dir=None))


@pytest.mark.parametrize("max_samples", [10, 60, 1000])
def test_sizes_respect_max_samples(max_samples):
    task = SyntheticTask(max_samples=max_samples)
    for partition in range(12):
        data = task.load_data(partition, seed=0, data_dir=None)
        total = data.train_examples + data.test_examples
        assert total <= max_samples
        assert total >= min(50, max_samples)  # the power law adds 50 to every client
        assert data.train_examples == int(total * 0.8)


def test_features_and_labels_have_the_declared_shape_and_range():
    task = SyntheticTask(alpha=1.0, beta=1.0)
    for partition in range(5):
        data = task.load_data(partition, seed=3, data_dir=None)
        for split in (data.train, data.test):
            features, labels = tensors_of(split)
            assert features.dtype == torch.float32
            assert features.shape == (len(labels), FEATURES)
            assert labels.dtype == torch.int64
            assert int(labels.min()) >= 0 and int(labels.max()) < CLASSES
            assert torch.isfinite(features).all()


def test_invalid_task_options_are_refused():
    with pytest.raises(ValueError):
        SyntheticTask(alpha=-1)
    with pytest.raises(ValueError):
        SyntheticTask(max_samples=9)


def test_build_model_is_deterministic_per_seed():
    task = SyntheticTask()
    first, again, other = task.build_model(5), task.build_model(5), task.build_model(6)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    assert not torch.equal(first.weight, other.weight)


def test_build_model_leaves_global_rng_untouched():
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    SyntheticTask().build_model(99)
    assert torch.equal(torch.get_rng_state(), before)


def train_once(weights: dict[str, torch.Tensor], config: TrainConfig, global_seed: int):
    task = SyntheticTask(max_samples=200)
    model = task.build_model(0)
    model.load_state_dict(weights)
    data = task.load_data(1, seed=4, data_dir=None)
    torch.manual_seed(global_seed)  # must not matter: training draws from config.seed only
    result = task.train(model, data, config)
    return model.state_dict(), result


def test_training_twice_from_the_same_weights_gives_identical_weights():
    weights = copy.deepcopy(SyntheticTask().build_model(0).state_dict())
    config = TrainConfig(local_epochs=2, batch_size=8, learning_rate=0.1, seed=17)
    first, result_a = train_once(weights, config, global_seed=1)
    second, result_b = train_once(weights, config, global_seed=2)
    assert not torch.equal(first["weight"], weights["weight"])  # training did something
    for name in weights:
        assert torch.equal(first[name], second[name]), name
    assert result_a == result_b
    assert result_a.examples == len(SyntheticTask(max_samples=200).load_data(1, 4, None).train)


def test_training_seed_changes_the_shuffle():
    weights = copy.deepcopy(SyntheticTask().build_model(0).state_dict())
    config = TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.1, seed=17)
    first, _ = train_once(weights, config, global_seed=0)
    other, _ = train_once(weights, TrainConfig(1, 8, 0.1, seed=18), global_seed=0)
    assert not torch.equal(first["weight"], other["weight"])
