"""SCAFFOLD and FedNova against updates computed by hand on one- and two-element tensors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from fedsilo.server.strategies import make_strategy
from fedsilo.server.strategies.fednova import (
    FedNova,
    LocalSteps,
    local_steps,
    normalizing_factor,
    step_scale,
)
from fedsilo.server.strategies.round_step import Contribution, RoundStep
from fedsilo.server.strategies.scaffold import Scaffold


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def fold_mean(
    models: list[dict[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """The example-weighted mean the server's fold hands a strategy."""
    total = sum(weights)
    return {
        name: sum(w * m[name].double() for m, w in zip(models, weights, strict=True)).float()
        / total
        for name in models[0]
    }


def test_scaffold_steps_the_model_and_its_control_variate_by_hand() -> None:
    strategy = Scaffold()
    x = {"w": t(1.0, 2.0), "count": torch.tensor([3])}
    assert_close(strategy.server_control(x), {"w": t(0.0, 0.0)})  # no c for the integer tensor
    # Two clients weighing 1 and 3: mean y = (1*[2, 0] + 3*[2, 4]) / 4 = [2, 3];
    # mean dc = (1*[0.4, -0.8] + 3*[0, 0.8]) / 4 = [0.1, 0.4].
    updates = [
        {"w": t(2.0, 0.0), "count": torch.tensor([4]), "w#dc": t(0.4, -0.8)},
        {"w": t(2.0, 4.0), "count": torch.tensor([4]), "w#dc": t(0.0, 0.8)},
    ]
    mean = fold_mean(updates, [1.0, 3.0])
    mean["count"] = torch.tensor([4])
    contributions = [Contribution(1.0), Contribution(3.0)]
    x1 = strategy.round_step(x, mean, contributions)
    assert_close(x1["w"], t(2.0, 3.0))  # eta_g = 1: x' = mean(y)
    assert torch.equal(x1["count"], torch.tensor([4]))
    assert_close(strategy.server_control(x1), {"w": t(0.1, 0.4)})  # c' = 0 + (2/2) mean(dc)
    # Round 2: mean y = [3, 3], mean dc = [0.2, 0]: c'' = [0.1, 0.4] + [0.2, 0].
    x2 = strategy.round_step(
        x1, {"w": t(3.0, 3.0), "count": torch.tensor([4]), "w#dc": t(0.2, 0.0)}, contributions
    )
    assert_close(x2["w"], t(3.0, 3.0))
    assert_close(strategy.server_control(x2), {"w": t(0.3, 0.4)})


def test_scaffold_global_step_and_population_scale_as_in_the_paper() -> None:
    # eta_g = 0.5: x' = x + 0.5 (mean(y) - x); N = 4, |S| = 2: c' = c + (2/4) mean(dc).
    strategy = make_strategy("scaffold", {"server_learning_rate": 0.5, "population": 4})
    assert isinstance(strategy, Scaffold) and isinstance(strategy, RoundStep)
    x = {"w": t(1.0, 2.0)}
    mean = {"w": t(3.0, 0.0), "w#dc": t(0.4, -0.8)}
    x1 = strategy.round_step(x, mean, [Contribution(5.0), Contribution(7.0)])
    assert_close(x1["w"], t(2.0, 1.0))
    assert_close(strategy.server_control(x1), {"w": t(0.2, -0.4)})


def test_scaffolds_control_variate_survives_its_checkpoint() -> None:
    strategy = Scaffold()
    x = {"w": t(1.0, 2.0)}
    strategy.round_step(x, {"w": t(0.0, 0.0), "w#dc": t(0.5, 0.25)}, [Contribution(1.0)])
    saved = {name: tensor.clone() for name, tensor in strategy.state_dict().items()}
    resumed = Scaffold()
    resumed.load_state_dict(saved)
    assert_close(resumed.server_control(x), {"w": t(0.5, 0.25)})
    with pytest.raises(ValueError):
        Scaffold().load_state_dict({"nonsense/w": t(1.0)})


def test_fednovas_normalizing_factor_is_the_sum_of_its_gradient_coefficients() -> None:
    assert normalizing_factor(3, 0.0) == 3.0
    # rho = 0.5, tau = 3: (1 - 0.5) / 0.5 + (1 - 0.25) / 0.5 + (1 - 0.125) / 0.5 = 4.25.
    assert normalizing_factor(3, 0.5) == pytest.approx(4.25, rel=1e-15)
    assert normalizing_factor(1, 0.9) == pytest.approx(1.0, rel=1e-15)
    with pytest.raises(ValueError, match="at least one local step"):
        normalizing_factor(0, 0.0)


def test_fednova_matches_wang_et_al_by_hand() -> None:
    # x = 0; client 1: y = 1 after tau = 2 steps, 10 examples; client 2: y = 4, tau = 4, 30.
    # The paper: d_i = (x - y_i) / a_i = -0.5, -1; p = 0.25, 0.75; tau_eff = 0.5 + 3 = 3.5;
    # x' = x - tau_eff (0.25 * -0.5 + 0.75 * -1) = 3.5 * 0.875 = 3.0625.
    x = {"w": t(0.0, 1.0)}
    ys = [{"w": t(1.0, 1.0)}, {"w": t(4.0, 1.0)}]
    steps = LocalSteps(local_epochs=1, batch_size=1, momentum=0.0)
    a = [steps.factor(2), steps.factor(4)]
    weights = [10 / a[0], 30 / a[1]]  # what the intake folds them with
    contributions = [Contribution(w, n) for w, n in zip(weights, a, strict=True)]
    assert step_scale(contributions) == pytest.approx(1.09375, rel=1e-15)
    x1 = FedNova().round_step(x, fold_mean(ys, weights), contributions)
    assert_close(x1["w"], t(3.0625, 1.0))


def test_fednova_with_equal_steps_is_fedavg() -> None:
    x = {"w": t(0.0)}
    contributions = [Contribution(10 / 3, 3.0), Contribution(20 / 3, 3.0)]
    assert step_scale(contributions) == pytest.approx(1.0, rel=1e-15)
    mean = {"w": t(2.0)}
    assert_close(FedNova().round_step(x, mean, contributions)["w"], t(2.0))


def test_fednovas_reported_steps_are_bounded_by_what_the_data_allow() -> None:
    steps = LocalSteps(local_epochs=2, batch_size=64, momentum=0.9)
    assert steps.most(100) == 4  # two batches an epoch
    assert steps.problem(4, 100) is None
    assert (
        steps.problem(5, 100)
        == "local_steps 5 not in 1..4 (2 epochs of 100 examples in batches of 64)"
    )
    assert steps.problem(0, 100) is not None
    assert local_steps(_Job("fedavg")) is None
    assert local_steps(_Job("fednova")) == LocalSteps(1, 32, 0.0)


class _Job:
    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.local_epochs = 1
        self.batch_size = 32
        self.momentum = 0.0
