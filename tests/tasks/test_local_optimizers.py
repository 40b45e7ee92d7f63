"""The job's local optimizer in train_classifier, against steps computed by hand.

A one-weight linear model ``logit = [w * x, 0]`` on one example (x = 1, label 0), one batch a
step: the cross-entropy gradient is ``g(w) = softmax(w, 0)[0] - 1 = sigmoid(w) - 1``, so every
step can be followed by hand, with momentum, Nesterov, weight decay, Adam and SCAFFOLD's
correction.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import TrainConfig
from fedsilo.tasks.training import make_optimizer, train_classifier

LR = 0.5
W0 = 0.3


class OneWeight(torch.nn.Module):
    """``logits = [w * x, 0]``: one parameter, a gradient known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([W0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.w * x[:, 0], torch.zeros_like(x[:, 0])], dim=1)


def gradient(w: float) -> float:
    return 1 / (1 + math.exp(-w)) - 1


def train(epochs: int, **settings: object) -> tuple[float, int]:
    model = OneWeight()
    data = TensorDataset(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.long))
    config = TrainConfig(local_epochs=epochs, batch_size=1, learning_rate=LR, seed=0, **settings)  # type: ignore[arg-type]
    result = train_classifier(model, data, config)
    return float(model.w.detach()), result.steps


def test_plain_sgd_steps_by_hand():
    w = W0
    for _ in range(3):
        w -= LR * gradient(w)
    got, steps = train(3)
    assert got == pytest.approx(w, rel=1e-12) and steps == 3


def test_momentum_and_weight_decay_step_as_torch_defines_them():
    # torch.optim.SGD: g' = g + wd w; b = mu b + g' (b = g' at first); w -= lr b.
    mu, wd = 0.9, 0.1
    w, b = W0, None
    for _ in range(3):
        g = gradient(w) + wd * w
        b = g if b is None else mu * b + g
        w -= LR * b
    got, _ = train(3, momentum=mu, weight_decay=wd)
    assert got == pytest.approx(w, rel=1e-12)
    plain, _ = train(3, weight_decay=wd)
    assert plain != pytest.approx(w, rel=1e-6)  # momentum really changed the path


def test_nesterov_steps_by_hand():
    # Nesterov: b = mu b + g; w -= lr (g + mu b).
    mu = 0.9
    w, b = W0, None
    for _ in range(3):
        g = gradient(w)
        b = g if b is None else mu * b + g
        w -= LR * (g + mu * b)
    got, _ = train(3, momentum=mu, nesterov=True)
    assert got == pytest.approx(w, rel=1e-12)
    heavy_ball, _ = train(3, momentum=mu)
    assert heavy_ball != pytest.approx(w, rel=1e-6)


def test_adam_steps_by_hand():
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    w, m, v = W0, 0.0, 0.0
    for t in range(1, 4):
        g = gradient(w)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= LR * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps)
    got, _ = train(3, optimizer="adam")
    assert got == pytest.approx(w, rel=1e-9)


def test_scaffold_correction_follows_each_step():
    # w -= lr g; then w -= lr (c - c_i).
    correction = 0.2
    w = W0
    for _ in range(2):
        w -= LR * gradient(w)
        w -= LR * correction
    got, steps = train(2, control_correction={"w": torch.tensor([correction], dtype=torch.float64)})
    assert got == pytest.approx(w, rel=1e-12) and steps == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adam", "momentum": 0.9}, "Adam"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ],
)
def test_a_bad_optimizer_setting_is_refused(settings: dict[str, object], message: str) -> None:
    config = TrainConfig(local_epochs=1, batch_size=1, learning_rate=LR, seed=0, **settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        make_optimizer(OneWeight().parameters(), config)
