"""FedProx's proximal term in train_classifier: off at mu=0, pulls towards the start at mu>0."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import TrainConfig
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from fedsilo.tasks.training import proximal_term, train_classifier


@dataclass(frozen=True)
class ProxConfig(TrainConfig):
    """A TrainConfig with ``proximal_mu``, whether or not TrainConfig has the field yet."""

    proximal_mu: float = 0.0


def plain_config() -> TrainConfig:
    return TrainConfig(local_epochs=3, batch_size=16, learning_rate=0.1, seed=5)


def prox_config(mu: float) -> ProxConfig:
    return ProxConfig(local_epochs=3, batch_size=16, learning_rate=0.1, seed=5, proximal_mu=mu)


def trained(config: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (start, end) parameters of the synthetic task's model trained with ``config``."""
    task = SyntheticTask(max_samples=200)
    model = task.build_model(seed=3)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    task.train(model, task.load_data(partition=0, seed=3, data_dir=None), config)
    return start, {name: p.detach().clone() for name, p in model.named_parameters()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[name] - b[name]).pow(2).sum()) for name in a))


def test_mu_zero_trains_bit_identically_to_plain_training():
    _, plain = trained(plain_config())
    _, prox = trained(prox_config(0.0))
    for name, tensor in plain.items():
        assert torch.equal(prox[name], tensor), name


def test_positive_mu_ends_closer_to_the_start():
    start, free = trained(prox_config(0.0))
    _, pulled = trained(prox_config(1.0))
    assert distance(pulled, start) < distance(free, start)
    assert distance(pulled, start) > 0  # it still trains


def test_negative_mu_is_refused():
    with pytest.raises(ValueError, match="proximal_mu"):
        trained(prox_config(-0.1))


def test_proximal_term_is_half_mu_times_squared_distance():
    params = [torch.tensor([1.0, 2.0]), torch.tensor(3.0)]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor(1.0)]
    # ||w - w0||^2 = 1 + 4 + 4 = 9; (0.5 / 2) * 9 = 2.25
    assert float(proximal_term(params, anchor, 0.5)) == 2.25


class OneWeight(torch.nn.Module):
    """Logits [w * x, 0]: a classifier with a single parameter w, starting at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.w * x, torch.zeros_like(x)], dim=1)


@pytest.mark.parametrize(("mu", "expected"), [(0.0, 0.8775407), (0.4, 0.6775407)])
def test_sgd_step_with_proximal_gradient_by_hand(mu, expected):
    # One example x = 1 with label 0, two epochs of one batch: two SGD steps with lr = 1.
    # Cross-entropy of logits [w, 0] for label 0 is log(1 + exp(-w)); its gradient is
    # -sigmoid(-w). The proximal gradient is mu * (w - w0), with w0 = 0 the start.
    # Step 1: w = 0; gradient -sigmoid(0) = -0.5, proximal 0; w = 0 + 0.5 = 0.5.
    # Step 2: w = 0.5; gradient -sigmoid(-0.5) = -0.3775407, proximal mu * 0.5;
    #         mu = 0:   w = 0.5 + 0.3775407 = 0.8775407;
    #         mu = 0.4: w = 0.5 + 0.3775407 - 0.2 = 0.6775407.
    model = OneWeight()
    data = TensorDataset(torch.tensor([[1.0]]), torch.tensor([0]))
    config = ProxConfig(local_epochs=2, batch_size=1, learning_rate=1.0, seed=0, proximal_mu=mu)
    result = train_classifier(model, data, config)
    torch.testing.assert_close(model.w.detach(), torch.tensor(expected))
    # The reported loss is the cross-entropy alone: mean of log(2) and log(1 + exp(-0.5)).
    assert result.loss == pytest.approx((math.log(2) + math.log1p(math.exp(-0.5))) / 2, rel=1e-6)
