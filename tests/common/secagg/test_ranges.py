"""Unmasking and the mean in ranges on several threads: the same words and values as in one."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from fedsilo.common.secagg import result
from fedsilo.common.secagg.masks import WORD
from fedsilo.common.secagg.result import RunningSum, in_ranges, split_ranges
from fedsilo.common.secagg.vectors import write_mean, write_mean_at

SEEDS = [(bytes([i]) * 32, sign) for i, sign in ((7, -1), (8, -1), (9, 1), (10, -1))]


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(result, "PARALLEL_MIN_WORDS", 1000)  # so that tiny vectors split


def test_ranges_cover_the_vector_in_whole_aes_blocks(small_ranges: None) -> None:
    ranges = split_ranges(10_001, 3)
    assert len(ranges) == 3
    assert ranges[0][0] == 0 and ranges[-1][1] == 10_001
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(begin % 4 == 0 for begin, _ in ranges)  # no keystream to skip at a range's start
    assert split_ranges(10_001, 1) == [(0, 10_001)]
    assert split_ranges(999, 4) == [(0, 999)]  # below the minimum: one range


def test_masks_removed_on_three_threads_equal_one_thread(small_ranges: None) -> None:
    values = np.arange(10_001, dtype=WORD) * np.uint32(2654435761)
    sums = []
    for threads in (1, 3):
        total = RunningSum(len(values))
        total.words[:] = values
        total.apply_masks(SEEDS, threads=threads)
        sums.append(total.words.copy())
    assert np.array_equal(sums[0], sums[1])
    assert not np.array_equal(sums[0], values)


def test_each_range_runs_on_its_own_thread(small_ranges: None) -> None:
    seen: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def work(begin: int, end: int) -> None:
        with lock:
            seen[(begin, end)] = threading.get_ident()

    in_ranges(10_001, 3, work)
    assert sorted(seen) == split_ranges(10_001, 3)
    assert threading.get_ident() not in seen.values()


def test_a_failing_range_raises_in_the_caller(small_ranges: None) -> None:
    def work(begin: int, end: int) -> None:
        if begin:
            raise ValueError(f"range at {begin}")

    with pytest.raises(ValueError, match="range at"):
        in_ranges(10_001, 3, work)


def test_the_mean_written_in_ranges_equals_the_mean_written_in_one_go(small_ranges: None) -> None:
    torch.manual_seed(0)
    start = {
        "a": torch.randn(3001),
        "steps": torch.tensor(5),  # not floating: not part of the vector
        "b": torch.randn(40, 50, dtype=torch.float64),
        "c": torch.randn(4999).to(torch.bfloat16),
    }
    length = 3001 + 2000 + 4999
    mean = np.random.default_rng(0).standard_normal(length) * 1e-3
    one = {name: t.clone() for name, t in start.items()}
    write_mean((mean[i : i + 700] for i in range(0, length, 700)), start, one)
    ranged = {name: torch.zeros_like(t) for name, t in start.items()}

    def work(begin: int, end: int) -> None:
        chunks = (mean[i : min(i + 512, end)] for i in range(begin, end, 512))
        assert write_mean_at(chunks, start, ranged, begin) == end

    in_ranges(length, 4, work)
    for name in ("a", "b", "c"):
        assert torch.equal(ranged[name], one[name]), name
        assert ranged[name].dtype == start[name].dtype
    expected_a = (start["a"].double() + torch.from_numpy(mean[:3001])).float()
    assert torch.equal(one["a"], expected_a)
