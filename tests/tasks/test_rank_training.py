"""train_classifier given a DistributedDataParallel model: the same batches, shared out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.tasks import TrainConfig
from fedsilo.tasks.training import global_batches, rank_share, train_classifier


def test_every_rank_draws_the_batches_one_process_would() -> None:
    dataset = TensorDataset(torch.arange(53))
    loader = DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(9)
    )
    generator = torch.Generator().manual_seed(9)
    for _ in range(2):  # the generator carries over to the next epoch in both
        expected = [batch.tolist() for (batch,) in loader]
        assert list(global_batches(53, 8, generator)) == expected


@pytest.mark.parametrize(("size", "world"), [(15, 2), (5, 2), (7, 3), (16, 4)])
def test_the_shares_of_a_batch_split_it_and_average_to_its_mean(size: int, world: int) -> None:
    batch = list(range(100, 100 + size))
    shares = [rank_share(batch, rank, world) for rank in range(world)]
    assert sorted(i for share, _ in shares for i in share) == batch  # disjoint, complete
    # DDP averages the ranks' gradients: (1/world) sum_r scale_r * |share_r| must be 1.
    assert sum(scale * len(share) for share, scale in shares) / world == pytest.approx(1.0)


def test_a_rank_without_examples_in_a_batch_computes_one_with_weight_0() -> None:
    assert rank_share([4, 5], 2, 3) == ([4], 0.0)


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo process group of one, in this process (a store in memory, no sockets)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank_group")
@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_one_rank_trains_as_one_process_does(mu: float) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(37, 6, generator=generator)
    dataset = TensorDataset(x, (x[:, 0] > 0).long())
    config = TrainConfig(local_epochs=2, batch_size=10, learning_rate=0.2, seed=17, proximal_mu=mu)
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 2)
    ranked = torch.nn.Linear(6, 2)
    ranked.load_state_dict(plain.state_dict())
    expected = train_classifier(plain, dataset, config)
    result = train_classifier(DistributedDataParallel(ranked), dataset, config)
    assert (result.examples, result.steps) == (expected.examples, expected.steps) == (37, 8)
    assert result.loss == pytest.approx(expected.loss, rel=1e-5)
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(ranked.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
