"""Coordinate median, trimmed mean and (Multi-)Krum against hand-computed results."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fedsilo.server.strategies.krum import Krum, krum, krum_scores, krum_select
from fedsilo.server.strategies.median import Median, coordinate_median
from fedsilo.server.strategies.trimmed_mean import (
    TrimmedMean,
    mean_of_middle,
    trim_count,
    trimmed_mean,
)


def updates_of(rows: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32):
    """One update per row, each with a single tensor ``w``."""
    return [{"w": torch.tensor(row, dtype=dtype)} for row in rows]


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert torch.equal(got[name], expected), (name, got[name], expected)


# Columns: the coordinates; rows: the clients.
ODD = [[1.0, 5.0, -3.0], [2.0, 4.0, 0.0], [100.0, -7.0, 1.0]]
EVEN = [*ODD, [3.0, 6.0, 2.0]]


def test_median_of_an_odd_count_is_the_middle_value():
    # sorted columns: [1, 2, 100], [-7, 4, 5], [-3, 0, 1]
    assert_identical(coordinate_median(updates_of(ODD)), {"w": torch.tensor([2.0, 4.0, 0.0])})


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # sorted columns: [1, 2, 3, 100] -> 2.5, [-7, 4, 5, 6] -> 4.5, [-3, 0, 1, 2] -> 0.5
    median = coordinate_median(updates_of(EVEN))
    assert_identical(median, {"w": torch.tensor([2.5, 4.5, 0.5])})
    stacked = torch.stack([u["w"] for u in updates_of(EVEN)])
    assert torch.equal(median["w"], stacked.quantile(0.5, dim=0))
    assert not torch.equal(median["w"], stacked.median(dim=0).values)  # that is [2, 4, 0]


def test_median_of_one_update_is_that_update():
    assert_identical(coordinate_median(updates_of([[1.5, -2.0]])), {"w": torch.tensor([1.5, -2.0])})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_median_keeps_floating_dtypes(dtype):
    got = coordinate_median(updates_of(EVEN, dtype))
    assert_identical(got, {"w": torch.tensor([2.5, 4.5, 0.5], dtype=dtype)})


def test_median_of_integers_rounds_half_to_even():
    rows = [[1, 1, 1], [2, 4, 2], [3, 5, 4], [100, 9, 7]]
    # middle pairs: (2, 3) -> 2.5 -> 2; (4, 5) -> 4.5 -> 4; (2, 4) -> 3
    got = coordinate_median(updates_of(rows, torch.int64))
    assert_identical(got, {"w": torch.tensor([2, 4, 3], dtype=torch.int64)})


def test_median_handles_every_tensor_of_the_model():
    updates = [
        {"w": torch.tensor([[1.0, 2.0]]), "n": torch.tensor(3, dtype=torch.int64)},
        {"w": torch.tensor([[9.0, 0.0]]), "n": torch.tensor(5, dtype=torch.int64)},
        {"w": torch.tensor([[4.0, 1.0]]), "n": torch.tensor(4, dtype=torch.int64)},
    ]
    want = {"w": torch.tensor([[4.0, 1.0]]), "n": torch.tensor(4, dtype=torch.int64)}
    assert_identical(coordinate_median(updates), want)


FIVE = [[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 7.0]]


@pytest.mark.parametrize(
    ("fraction", "want"),
    [
        (0.0, [22.0, -8.0]),  # nothing dropped: (1+2+3+4+100)/5, (-50+0+1+2+7)/5
        (0.2, [3.0, 1.0]),  # floor(1.0) = 1 dropped each end: (2+3+4)/3, (0+1+2)/3
        (0.39, [3.0, 1.0]),  # floor(1.95) = 1
        (0.4, [3.0, 1.0]),  # floor(2.0) = 2: only the median is left
    ],
)
def test_trimmed_mean_drops_the_extremes_of_every_coordinate(fraction, want):
    assert_identical(trimmed_mean(updates_of(FIVE), fraction), {"w": torch.tensor(want)})


def test_trimmed_mean_of_an_even_count():
    # trim 0.25 of 4 drops 1 each end: the mean of the middle two, i.e. the median
    assert_identical(trimmed_mean(updates_of(EVEN), 0.25), coordinate_median(updates_of(EVEN)))
    # trim 0.2 of 4 drops none: the plain mean of [1, 2, 3, 100] etc.
    assert_identical(trimmed_mean(updates_of(EVEN), 0.2), {"w": torch.tensor([26.5, 2.0, 0.0])})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_trimmed_mean_keeps_dtypes(dtype):
    got = trimmed_mean(updates_of(FIVE, dtype), 0.2)
    assert_identical(got, {"w": torch.tensor([3, 1], dtype=dtype)})


def test_trim_count_reads_the_fraction_as_written():
    assert trim_count(100, 0.29) == 29  # float 0.29 * 100 is 28.999999999999996
    assert trim_count(10, 0.3) == 3
    assert trim_count(9, 0.3) == 2
    assert trim_count(1, 0.49) == 0


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7, float("nan")])
def test_trim_fraction_outside_zero_to_half_is_refused(fraction):
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(updates_of(FIVE), fraction)
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(fraction)


def test_a_trim_that_leaves_no_value_is_refused():
    with pytest.raises(ValueError, match="leaves none"):
        mean_of_middle(updates_of(EVEN), 2)
    with pytest.raises(ValueError, match="no updates"):
        trimmed_mean([], 0.2)
    with pytest.raises(ValueError, match="no updates"):
        coordinate_median([])


def test_updates_with_other_tensors_are_refused():
    with pytest.raises(ValueError, match="other tensors"):
        coordinate_median([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])


def test_complex_tensors_have_no_median():
    with pytest.raises(ValueError, match="complex"):
        coordinate_median([{"z": torch.zeros(2, dtype=torch.complex64)}] * 3)


# Five points in the plane, given as two one-element tensors so that the distance must add up
# over tensors: u4 is far from the rest.
POINTS = [(0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (1.0, 1.0), (10.0, 10.0)]
PLANE = [{"a": torch.tensor([x]), "b": torch.tensor([y])} for x, y in POINTS]


def test_krum_scores_by_hand():
    # squared distances: d01=1 d02=4 d03=2 d04=200 d12=5 d13=1 d14=181 d23=2 d24=164 d34=162
    # n=5, f=1: each score sums the n - f - 2 = 2 nearest
    # u0: 1+2, u1: 1+1, u2: 2+4, u3: 1+2, u4: 162+164
    assert krum_scores(PLANE, byzantine=1) == [3.0, 2.0, 6.0, 3.0, 326.0]


def test_krum_selects_the_lowest_score_and_breaks_ties_by_index():
    assert krum_select(PLANE, byzantine=1) == [1]
    assert krum_select(PLANE, byzantine=1, multi=3) == [1, 0, 3]  # u0 and u3 tie at 3
    assert 4 not in krum_select(PLANE, byzantine=1, multi=4)  # n - f = 4: the far one never


def test_krum_returns_a_copy_of_the_selected_update():
    chosen = krum(PLANE, byzantine=1)
    assert_identical(chosen, PLANE[1])
    assert chosen["a"] is not PLANE[1]["a"]


def test_multi_krum_is_the_unweighted_mean_of_the_selected():
    # multi=2 selects u1 and u0: ((1 + 0) / 2, (0 + 0) / 2)
    assert_identical(krum(PLANE, 1, multi=2), {"a": torch.tensor([0.5]), "b": torch.tensor([0.0])})


def test_krum_far_update_is_never_selected_wherever_it_sits():
    for position in range(len(POINTS)):
        moved = [p for i, p in enumerate(PLANE) if i != 4]
        moved.insert(position, PLANE[4])
        assert position not in krum_select(moved, byzantine=1, multi=4)


def test_krum_never_selects_a_nan_update():
    updates = [dict(u) for u in PLANE[:4]] + [{"a": torch.tensor([0.5]), "b": torch.tensor([0.5])}]
    updates[1] = {"a": torch.tensor([float("nan")]), "b": torch.tensor([0.0])}
    assert 1 not in krum_select(updates, byzantine=1, multi=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_krum_keeps_dtypes(dtype):
    updates = [{k: v.to(dtype) for k, v in u.items()} for u in PLANE]
    assert_identical(krum(updates, 1), updates[1])
    # multi=3 averages u1, u0, u3: a = 2/3, b = 1/3
    got = krum(updates, 1, multi=3)
    assert got["a"].dtype == dtype and got["b"].dtype == dtype
    if dtype == torch.int64:  # rounded half to even
        assert_identical(got, {"a": torch.tensor([1]), "b": torch.tensor([0])})


def test_krum_needs_two_f_plus_three_updates():
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3"):
        krum(PLANE, byzantine=2)
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3"):
        krum(PLANE[:4], byzantine=1)
    krum(PLANE[:3], byzantine=0)  # n = 3 = 2*0 + 3


def test_krum_refuses_bad_multi_and_byzantine():
    with pytest.raises(ValueError, match="multi"):
        krum(PLANE, 1, multi=5)  # more than n - f = 4
    with pytest.raises(ValueError, match="multi"):
        krum(PLANE, 1, multi=0)
    with pytest.raises(ValueError, match="byzantine"):
        krum(PLANE, -1)
    with pytest.raises(ValueError, match="multi"):
        Krum(byzantine=1, multi=0)


def random_updates(count: int, seed: int):
    """float32 updates whose magnitudes span many decades, so sums depend on order."""
    generator = torch.Generator().manual_seed(seed)
    updates = []
    for _ in range(count):
        scale = 10.0 ** torch.randint(-6, 7, (257,), generator=generator).float()
        updates.append(
            {
                "w": torch.randn(257, generator=generator) * scale,
                "b": torch.randn(3, 2, generator=generator),
                "n": torch.randint(0, 1000, (2,), generator=generator),
            }
        )
    return updates


@pytest.mark.parametrize(
    "rule",
    [
        coordinate_median,
        lambda u: trimmed_mean(u, 0.3),
        lambda u: krum(u, 2),
        lambda u: krum(u, 2, multi=5),
    ],
    ids=["median", "trimmed-mean", "krum", "multi-krum"],
)
def test_same_inputs_give_the_same_bits(rule):
    threads = torch.get_num_threads()
    try:
        first = rule(random_updates(8, seed=3))
        torch.set_num_threads(1)
        again = rule(random_updates(8, seed=3))
    finally:
        torch.set_num_threads(threads)
    assert_identical(again, first)
    # the key order of the later updates does not matter either
    shuffled = [random_updates(8, seed=3)[0]] + [
        dict(reversed(u.items())) for u in random_updates(8, seed=3)[1:]
    ]
    assert_identical(rule(shuffled), first)


@pytest.mark.parametrize(
    "strategy", [Median(), TrimmedMean(0.2), Krum(byzantine=1, multi=2)], ids=lambda s: s.name
)
def test_combine_ignores_the_weights(strategy):
    updates = updates_of(FIVE)
    global_state = {"w": torch.zeros(2)}
    equal = strategy.combine(global_state, updates, [1.0] * 5)
    lopsided = strategy.combine(global_state, updates, [1e6, 1.0, 1.0, 1.0, 5e5])
    assert_identical(lopsided, equal)
    with pytest.raises(ValueError, match="weights"):
        strategy.combine(global_state, updates, [1.0])


def test_combine_is_the_pure_function():
    updates = updates_of(FIVE)
    like = {"w": torch.zeros(2)}
    assert_identical(Median().combine(like, updates, [1.0] * 5), coordinate_median(updates))
    assert_identical(TrimmedMean(0.2).combine(like, updates, [1.0] * 5), trimmed_mean(updates, 0.2))
    assert_identical(Krum(1, 2).combine(like, updates, [1.0] * 5), krum(updates, 1, 2))


@pytest.mark.parametrize(
    ("strategy", "name"),
    [(Median(), "median"), (TrimmedMean(), "trimmed-mean"), (Krum(), "krum")],
)
def test_strategies_are_stateless_and_need_every_update(strategy, name):
    assert strategy.name == name
    assert strategy.needs_all_updates is True
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        strategy.load_state_dict({"momentum": torch.zeros(1)})


def test_default_parameters():
    assert TrimmedMean().trim_fraction == 0.2
    assert (Krum().byzantine, Krum().multi) == (1, 1)
