"""The training loops' batches of a TensorDataset are gathered a batch at a time, and are the
very tensors a DataLoader gives, in the same order, from the same generator draws."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.tasks.training import ordered_batches, shuffled_batches


def dataset(count: int = 70) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(count, 1, 4, 4, generator=generator), torch.arange(count) % 3)


def assert_same(ours: list[list[torch.Tensor]], loader: list[list[torch.Tensor]]) -> None:
    assert len(ours) == len(loader)
    for mine, theirs in zip(ours, loader, strict=True):
        assert len(mine) == len(theirs) == 2
        for a, b in zip(mine, theirs, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_shuffled_batches_are_the_loaders_epoch_after_epoch() -> None:
    data = dataset()
    ours, theirs = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=theirs)
    for _ in range(3):  # each epoch draws again from the generator, as the loader's does
        assert_same(list(shuffled_batches(data, 32, ours)), list(loader))
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_ordered_batches_are_the_loaders_with_a_short_last_batch() -> None:
    data = dataset(70)
    assert_same(list(ordered_batches(data, 32)), list(DataLoader(data, batch_size=32)))


def test_any_other_dataset_goes_through_the_loader() -> None:
    class Doubled(TensorDataset):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
            return tuple(2 * t for t in super().__getitem__(index))

    data = Doubled(*dataset().tensors)
    batches = list(shuffled_batches(data, 32, torch.Generator().manual_seed(1)))
    expected = list(DataLoader(data, batch_size=32, shuffle=True,
                               generator=torch.Generator().manual_seed(1)))  # fmt: skip
    assert_same(batches, expected)
    assert_same(list(ordered_batches(data, 32)), list(DataLoader(data, batch_size=32)))
