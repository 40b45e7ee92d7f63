"""FedAvg arithmetic and the order-independent streaming fold."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.strategies import fedavg

CLIENTS = [3, 10, 7, 42]  # deliberately not in id order
WEIGHTS = {3: 17.0, 10: 5.0, 7: 123.0, 42: 64.0}


def random_updates(seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """float32 updates whose magnitudes span many decades, so float sums depend on order."""
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for cid in CLIENTS:
        scale = 10.0 ** torch.randint(-6, 7, (64,), generator=generator).float()
        updates[cid] = {
            "w": torch.randn(64, generator=generator) * scale,
            "b": torch.randn(3, 2, generator=generator),
        }
    return updates


LIKE = {"w": torch.zeros(64), "b": torch.zeros(3, 2)}


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype
        assert torch.equal(got[name], expected), name


def test_fedavg_matches_a_hand_computed_weighted_mean():
    updates = [
        {"w": torch.tensor([1.0, 2.0, 0.0]), "b": torch.tensor(6.0, dtype=torch.float64)},
        {"w": torch.tensor([4.0, 8.0, -3.0]), "b": torch.tensor(0.0, dtype=torch.float64)},
        {"w": torch.tensor([7.0, -1.0, 3.0]), "b": torch.tensor(2.0, dtype=torch.float64)},
    ]
    mean = fedavg.aggregate(updates, [1.0, 2.0, 3.0])
    # w: (1*1 + 2*4 + 3*7)/6 = 30/6 = 5; (2 + 16 - 3)/6 = 2.5; (0 - 6 + 9)/6 = 0.5
    # b: (6 + 0 + 6)/6 = 2
    assert torch.equal(mean["w"], torch.tensor([5.0, 2.5, 0.5]))
    assert torch.equal(mean["b"], torch.tensor(2.0, dtype=torch.float64))


def test_fedavg_of_one_update_is_that_update():
    # The running sum scales by the weight and divides at the end: equal up to float32 rounding.
    update = {"w": torch.randn(5)}
    torch.testing.assert_close(fedavg.aggregate([update], [7.0])["w"], update["w"])
    assert torch.equal(fedavg.aggregate([update], [1.0])["w"], update["w"])


def test_fedavg_refuses_no_updates():
    with pytest.raises(ValueError):
        fedavg.aggregate([], [])


def test_fedavg_next_global_is_the_mean_update():
    mean = {"w": torch.ones(2)}
    assert fedavg.FedAvg().next_global({"w": torch.zeros(2)}, mean) is mean


def fold_in_order(order, updates, dropped=(), drop_at=0):
    """Submit in ``order``; drop ``dropped`` once ``drop_at`` updates have been submitted."""
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    for position, cid in enumerate(order):
        if position == drop_at and dropped:
            fold.drop(dropped)
        fold.submit(cid, WEIGHTS[cid], updates[cid])
    if dropped and drop_at >= len(order):
        fold.drop(dropped)
    assert fold.complete
    return fold


def test_fold_is_bit_identical_for_every_arrival_order():
    updates = random_updates()
    reference = fedavg.aggregate(
        [updates[c] for c in sorted(CLIENTS)], [WEIGHTS[c] for c in sorted(CLIENTS)]
    )
    # The data is order-sensitive: folding in another order gives other bits, so this test
    # would notice a fold that follows arrival order.
    reverse = sorted(CLIENTS, reverse=True)
    other = fedavg.aggregate([updates[c] for c in reverse], [WEIGHTS[c] for c in reverse])
    assert not torch.equal(other["w"], reference["w"])

    for order in itertools.permutations(CLIENTS):
        fold = fold_in_order(order, updates)
        assert fold.folded == sorted(CLIENTS)
        assert fold.total_weight == sum(WEIGHTS.values())
        assert_identical(fold.mean(), reference)


def test_fold_with_a_dropped_client_is_bit_identical_for_every_order():
    updates = random_updates(seed=1)
    survivors = [c for c in sorted(CLIENTS) if c != 7]
    reference = fedavg.aggregate([updates[c] for c in survivors], [WEIGHTS[c] for c in survivors])
    for order in itertools.permutations(survivors):
        for drop_at in range(len(order) + 1):
            fold = fold_in_order(order, updates, dropped=[7], drop_at=drop_at)
            assert fold.dropped == [7]
            assert fold.folded == survivors
            assert_identical(fold.mean(), reference)


def test_outstanding_and_complete_track_progress():
    updates = random_updates()
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.submit(42, 1.0, updates[42])  # last in id order: waits
    assert fold.folded == []
    assert fold.outstanding == [3, 7, 10]
    assert not fold.complete
    fold.submit(3, 1.0, updates[3])
    assert fold.folded == [3]
    assert fold.drop([7, 10]) == [7, 10]
    assert fold.folded == [3, 42]
    assert fold.complete
    assert fold.outstanding == []


def test_drop_of_an_already_submitted_client_returns_nothing():
    updates = random_updates()
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.submit(3, 1.0, updates[3])  # folded at once
    fold.submit(42, 1.0, updates[42])  # waiting for its turn
    assert fold.drop([3]) == []
    assert fold.drop([42]) == []
    assert fold.drop([99]) == []  # never expected
    assert fold.drop([7]) == [7]
    assert fold.drop([7]) == []
    assert fold.dropped == [7]


def test_dropping_the_same_client_twice_in_one_call_reports_it_once():
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    assert fold.drop([7, 7]) == [7]
    assert fold.dropped == [7]


def test_submit_twice_raises():
    updates = random_updates()
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.submit(10, 1.0, updates[10])
    with pytest.raises(ValueError):
        fold.submit(10, 1.0, updates[10])
    fold.submit(3, 1.0, updates[3])
    with pytest.raises(ValueError):
        fold.submit(3, 1.0, updates[3])


def test_submit_from_a_dropped_or_unexpected_client_or_with_no_weight_raises():
    updates = random_updates()
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.drop([7])
    with pytest.raises(ValueError):
        fold.submit(7, 1.0, updates[7])
    with pytest.raises(ValueError):
        fold.submit(5, 1.0, updates[3])
    with pytest.raises(ValueError):
        fold.submit(3, 0.0, updates[3])


def test_mean_before_complete_raises():
    updates = random_updates()
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.submit(3, 1.0, updates[3])
    with pytest.raises(RuntimeError):
        fold.mean()


def test_mean_when_every_client_was_dropped_raises():
    fold = OrderedFold(expected=list(CLIENTS), like=LIKE)
    fold.drop(CLIENTS)
    assert fold.complete
    with pytest.raises(ValueError):
        fold.mean()


def test_integer_buffers_are_averaged_and_rounded():
    like = {"count": torch.zeros(2, dtype=torch.int64), "small": torch.zeros(1, dtype=torch.int32)}
    updates = [
        {"count": torch.tensor([1, 10]), "small": torch.tensor([3], dtype=torch.int32)},
        {"count": torch.tensor([10, 7]), "small": torch.tensor([4], dtype=torch.int32)},
    ]
    fold = OrderedFold(expected=[0, 1], like=like)
    fold.submit(1, 3.0, updates[1])
    fold.submit(0, 1.0, updates[0])
    mean = fold.mean()
    # count: (1 + 30)/4 = 7.75 -> 8; (10 + 21)/4 = 7.75 -> 8. small: (3 + 12)/4 = 3.75 -> 4
    assert torch.equal(mean["count"], torch.tensor([8, 8]))
    assert torch.equal(mean["small"], torch.tensor([4], dtype=torch.int32))
    # (1*1 + 1*10)/2 = 5.5 and (10*1 + 7*1)/2 = 8.5 both round to even; 7.25 rounds down
    evenly = fedavg.aggregate(updates, [1.0, 1.0])["count"]
    assert torch.equal(evenly, torch.tensor([6, 8]))
    down = fedavg.aggregate([{"c": torch.tensor([7])}, {"c": torch.tensor([8])}], [3.0, 1.0])
    assert torch.equal(down["c"], torch.tensor([7]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_tensors_come_back_in_their_dtype(dtype):
    like = {"w": torch.zeros(3, dtype=dtype)}
    updates = [
        {"w": torch.tensor([1.0, 2.0, -4.0], dtype=dtype)},
        {"w": torch.tensor([3.0, 4.0, 4.0], dtype=dtype)},
    ]
    fold = OrderedFold(expected=[1, 2], like=like)
    fold.submit(2, 1.0, updates[1])
    fold.submit(1, 1.0, updates[0])
    mean = fold.mean()
    assert mean["w"].dtype == dtype
    assert torch.equal(mean["w"], torch.tensor([2.0, 3.0, 0.0], dtype=dtype))


def test_low_precision_sum_does_not_lose_small_updates():
    # 256 clients adding 1 to 256 in bfloat16 would stall at 256; the fold keeps float32 sums.
    like = {"w": torch.zeros(1, dtype=torch.bfloat16)}
    fold = OrderedFold(expected=list(range(512)), like=like)
    for cid in range(512):
        fold.submit(cid, 1.0, {"w": torch.tensor([256.0 if cid < 256 else 257.0]).bfloat16()})
    assert fold.mean()["w"].item() == 256.0  # (256*256 + 256*257)/512 = 256.5 -> bf16 256
