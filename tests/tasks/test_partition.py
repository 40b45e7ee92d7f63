"""Partitioners assign samples exactly once, repeat from a seed, and skew as NIID-Bench does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsilo.common.errors import ConfigError
from fedsilo.tasks.partition import (
    LabelPartition,
    dirichlet_label_skew,
    iid,
    label_count_skew,
    natural,
    quantity_skew,
    whole_number,
)

CLASSES = 10
# 5,000 samples, 500 of each class, in a shuffled order.
LABELS = torch.from_numpy(np.random.default_rng(0).permutation(np.repeat(np.arange(CLASSES), 500)))


def flat(parts: list[list[int]]) -> list[int]:
    return [index for part in parts for index in part]


def histograms(parts: list[list[int]]) -> np.ndarray:
    labels = LABELS.numpy()
    return np.array([np.bincount(labels[part], minlength=CLASSES) for part in parts])


def mean_max_share(parts: list[list[int]]) -> float:
    """Average over clients of the share of the client's largest class."""
    counts = histograms(parts)
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


@pytest.mark.parametrize(
    "split",
    [
        lambda seed: iid(len(LABELS), 7, seed),
        lambda seed: dirichlet_label_skew(LABELS, 7, 0.5, seed),
        lambda seed: quantity_skew(len(LABELS), 7, 0.5, seed),
        lambda seed: label_count_skew(LABELS, 12, 3, seed),
    ],
    ids=["iid", "dirichlet", "quantity", "labels"],
)
def test_every_sample_is_assigned_exactly_once_and_seeds_repeat(split):
    parts = split(3)
    assert sorted(flat(parts)) == list(range(len(LABELS)))
    assert all(isinstance(i, int) for i in flat(parts))
    assert split(3) == parts
    assert split(4) != parts


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(part) for part in iid(103, 10, seed=1)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103


def test_small_beta_skews_labels_and_large_beta_is_near_uniform():
    skewed = dirichlet_label_skew(LABELS, 10, beta=0.1, seed=5)
    uniform = dirichlet_label_skew(LABELS, 10, beta=100.0, seed=5)
    # Dir(0.1): most of a client's data is one class; Dir(100): close to 1/10 each
    assert mean_max_share(skewed) > 0.5
    assert mean_max_share(uniform) < 0.2
    shares = histograms(uniform) / histograms(uniform).sum(axis=1, keepdims=True)
    assert np.abs(shares - 1 / CLASSES).max() < 0.08
    # small beta also leaves many (client, class) cells (almost) empty
    assert (histograms(skewed) < 5).sum() > 30
    assert (histograms(uniform) < 5).sum() == 0


def test_dirichlet_gives_every_client_min_size():
    parts = dirichlet_label_skew(LABELS, 40, beta=0.1, seed=2, min_size=20)
    assert min(len(part) for part in parts) >= 20


def test_dirichlet_refuses_impossible_min_size():
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_label_skew(LABELS[:50], 10, beta=0.5, seed=0, min_size=10)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_label_count_skew_gives_exactly_k_labels_per_client(k):
    parts = label_count_skew(LABELS, 10, k, seed=8)
    for client, counts in enumerate(histograms(parts)):
        assert (counts > 0).sum() == k
        assert counts[client % CLASSES] > 0  # client i always holds class i mod K
    assert len(set(flat(parts))) == len(flat(parts))


def test_label_count_skew_leaves_out_classes_nobody_holds():
    parts = label_count_skew(LABELS, 3, 1, seed=0)
    held = {int(label) for part in parts for label in LABELS[part]}
    assert held == {0, 1, 2}
    assert len(flat(parts)) == 3 * 500


def test_label_count_skew_refuses_more_labels_than_classes():
    with pytest.raises(ValueError, match="labels_per_client"):
        label_count_skew(LABELS, 4, CLASSES + 1, seed=0)


def test_quantity_skew_sizes_vary_with_beta():
    skewed = [len(part) for part in quantity_skew(len(LABELS), 10, beta=0.3, seed=1)]
    even = [len(part) for part in quantity_skew(len(LABELS), 10, beta=1000.0, seed=1)]
    assert min(skewed) >= 10
    assert max(skewed) / min(skewed) > 5
    assert max(even) / min(even) < 1.3


def test_natural_makes_one_client_per_key_in_sorted_order():
    groups = ["bob", "alice", "bob", "carol", "alice", "bob"]
    assert natural(groups) == [[1, 4], [0, 2, 5], [3]]
    assert natural([3, 1, 3]) == [[1], [0, 2]]


def test_label_partition_fills_defaults_and_refuses_stray_options():
    assert LabelPartition.from_options(10, "dirichlet", None, None).beta == 0.5
    assert LabelPartition.from_options(4.0, "labels", None, 3.0).labels_per_client == 3
    assert LabelPartition.from_options(4, "labels", None, None).labels_per_client == 2
    for bad in [
        (10, "shards", None, None),
        (10, "iid", 0.5, None),
        (10, "dirichlet", None, 2),
        (10, "dirichlet", -1.0, None),
        (2.5, "iid", None, None),
        (0, "iid", None, None),
    ]:
        with pytest.raises(ValueError):
            LabelPartition.from_options(*bad)


def test_label_partition_client_split_is_80_20_and_checks_the_partition():
    spec = LabelPartition.from_options(5, "iid", None, None)
    train, test = spec.client_split(LABELS, 2, seed=0)
    assert (len(train), len(test)) == (800, 200)
    assert not set(train) & set(test)
    with pytest.raises(ConfigError, match="out of range"):
        spec.client_split(LABELS, 5, seed=0)


def test_whole_number_accepts_integral_floats_only():
    assert whole_number(3.0, "n") == 3
    with pytest.raises(ValueError, match="whole number"):
        whole_number(3.5, "n")
