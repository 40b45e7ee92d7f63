"""Record-level DP-SGD in the silo (Opacus) and the silo's privacy budget across rounds."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from pydantic import ValidationError
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.common.errors import ConfigError
from fedsilo.tasks import TrainConfig
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from fedsilo.tasks.interface import DpSgdConfig, DpSgdReport, LocalData
from fedsilo.tasks.privacy import (
    add_distributed_noise_,
    clip_delta_,
    delta_norm,
    make_private,
    noise_generator,
)
from fedsilo.tasks.privacy_budget import DpSgdPolicy, PrivacyBudget, RoundPlan, plan_round
from fedsilo.tasks.training import train_classifier

DELTA = 1e-5
OPACUS_ATTRIBUTES = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")


def synthetic() -> tuple[SyntheticTask, LocalData]:
    task = SyntheticTask(max_samples=200)
    return task, task.load_data(partition=0, seed=3, data_dir=None)


def dp_config(seed: int | None = 11, noise: float = 1.0, mu: float = 0.0) -> TrainConfig:
    privacy = DpSgdConfig(noise_multiplier=noise, max_grad_norm=1.0, seed=seed)
    return TrainConfig(2, 16, 0.1, seed=5, proximal_mu=mu, privacy=privacy)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[name] - b[name]).pow(2).sum()) for name in a))


def independent_epsilon(noise: float, sample_rate: float, steps: int) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps by dp-accounting's RDP accountant."""
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise))
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return float(accountant.get_epsilon(DELTA))


# ------------------------------------------------------------------ DP-SGD


def test_dp_training_returns_the_plain_module_with_its_state_dict_keys():
    model = nn.Sequential(nn.Flatten(), nn.Linear(60, 16), nn.ReLU(), nn.Linear(16, 10))
    keys = list(model.state_dict())
    _, data = synthetic()
    result = train_classifier(model, data.train, dp_config())
    assert type(model) is nn.Sequential
    assert list(model.state_dict()) == keys  # no "_module." prefix
    for parameter in model.parameters():
        assert not any(hasattr(parameter, name) for name in OPACUS_ATTRIBUTES)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    assert result.privacy is not None and result.steps == result.privacy.steps > 0


def test_dp_round_reports_the_sampling_rate_and_steps_it_took():
    task, data = synthetic()
    model = task.build_model(seed=3)
    config = dp_config()
    result = task.train(model, data, config)
    batches = math.ceil(data.train_examples / config.batch_size)  # 160 / 16 = 10
    assert result.privacy == DpSgdReport(
        noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1 / batches, steps=2 * batches
    )
    plan = plan_round(data.train_examples, config.batch_size, config.local_epochs)
    assert plan == RoundPlan(result.privacy.sample_rate, result.privacy.steps)


@pytest.mark.parametrize("batches", [10, 99])
def test_the_plan_is_the_round_opacus_trains_even_where_it_takes_one_step_fewer(batches):
    # Opacus' Poisson loader takes int(1 / (1 / batches)) steps: 98 for 99 batches.
    records = batches * 2
    data = TensorDataset(torch.randn(records, 3), torch.randint(0, 2, (records,)))
    config = TrainConfig(1, 2, 0.1, seed=1, privacy=DpSgdConfig(1.0, 1.0, seed=2))
    result = train_classifier(nn.Linear(3, 2), data, config)
    assert result.privacy is not None
    plan = plan_round(records, 2, 1)
    assert plan == RoundPlan(result.privacy.sample_rate, result.privacy.steps)
    assert plan.steps == (98 if batches == 99 else batches)


def test_seeded_dp_round_is_bit_for_bit_reproducible_and_the_seed_matters():
    task, data = synthetic()
    trained = []
    for seed in (11, 11, 12):
        model = task.build_model(seed=3)
        task.train(model, data, dp_config(seed=seed))
        trained.append(weights(model))
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    assert not torch.equal(trained[0]["weight"], trained[2]["weight"])


def test_unseeded_dp_rounds_draw_secret_noise_that_differs_every_time():
    task, data = synthetic()
    trained = []
    for _ in range(2):
        model = task.build_model(seed=3)
        task.train(model, data, dp_config(seed=None))
        trained.append(weights(model))
    assert not torch.equal(trained[0]["weight"], trained[1]["weight"])


def test_two_dp_rounds_on_the_same_model_object_both_train():
    task, data = synthetic()
    model = task.build_model(seed=3)
    before = weights(model)
    task.train(model, data, dp_config(seed=1))
    middle = weights(model)
    task.train(model, data, dp_config(seed=2))
    assert distance(before, middle) > 0 and distance(middle, weights(model)) > 0


def test_dp_fedprox_pulls_the_weights_towards_the_start():
    task, data = synthetic()
    start = weights(task.build_model(seed=3))
    ends = []
    for mu in (0.0, 2.0):
        model = task.build_model(seed=3)
        task.train(model, data, dp_config(seed=4, mu=mu))
        ends.append(weights(model))
    assert 0 < distance(ends[1], start) < distance(ends[0], start)


def test_per_sample_gradients_are_clipped_before_they_are_summed():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    inputs, labels = torch.randn(64, 8) * 100, torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=16)
    config = DpSgdConfig(noise_multiplier=1e-6, max_grad_norm=0.01, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with make_private(model, optimizer, loader, config) as private:
        batch, batch_labels = next(iter(private.loader))
        functional.cross_entropy(model(batch), batch_labels).backward()
        raw = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert private.optimizer.pre_step()
        clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    # the mean of len(batch) gradients each of norm <= C, divided by the expected batch of 16
    assert raw > 1.0
    assert clipped <= 0.01 * len(batch) / 16 + 1e-4


def test_a_dp_sgd_step_adds_noise_of_std_z_c_over_the_expected_batch():
    model = nn.Linear(400, 250)  # 100,250 noisy coordinates
    dataset = TensorDataset(torch.randn(64, 400), torch.zeros(64, dtype=torch.long))
    loader = DataLoader(dataset, batch_size=16)
    config = DpSgdConfig(noise_multiplier=2.0, max_grad_norm=3.0, seed=7)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with make_private(model, optimizer, loader, config) as private:
        batch, _ = next(iter(private.loader))
        (model(batch) * 0).sum().backward()  # every per-sample gradient is 0: only noise remains
        assert private.optimizer.pre_step()
        noise = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    expected = 2.0 * 3.0 / 16
    # the sample std of 100,250 normals is within 1 % of sigma with 6-sigma margin (1/sqrt(2N))
    assert float(noise.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(noise.numel())


def test_empty_poisson_batches_leave_the_model_finite():
    model = nn.Linear(4, 3)
    dataset = TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    # batch size 1 of 10 records: P(empty batch) = 0.9^10 = 0.35 per step, 100 steps
    config = TrainConfig(10, 1, 0.1, seed=0, privacy=DpSgdConfig(1.0, 1.0, seed=3))
    result = train_classifier(model, dataset, config)
    assert result.privacy is not None and result.privacy.steps == 100
    assert math.isfinite(result.loss)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize(
    ("layer", "reason"),
    [(nn.LSTM(4, 4, batch_first=True), "LSTM"), (nn.BatchNorm1d(4), "BatchNorm")],
)
def test_a_model_opacus_cannot_train_is_refused_with_a_clear_error(layer, reason):
    model = nn.Sequential(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    with (
        pytest.raises(ValueError, match=f"cannot be trained with DP-SGD.*{reason}"),
        make_private(model, optimizer, loader, DpSgdConfig(1.0, 1.0)),
    ):
        pass


@pytest.mark.parametrize(("noise", "clip"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_dp_sgd_settings_need_positive_noise_and_clipping(noise, clip):
    with pytest.raises(ValueError, match="must be > 0"):
        DpSgdConfig(noise_multiplier=noise, max_grad_norm=clip)


# ------------------------------------------------------------------ DP-FedAvg's client share


def test_clip_delta_scales_to_the_bound_and_leaves_small_deltas_alone():
    delta = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0]), "n": torch.tensor([7])}
    assert clip_delta_(delta, 1.0) == pytest.approx(5.0)  # ||(3, 0, 4)|| = 5
    assert delta_norm(delta) == pytest.approx(1.0)
    assert torch.allclose(delta["a"], torch.tensor([0.6, 0.0]))
    assert torch.equal(delta["n"], torch.tensor([7]))  # integers are not part of the delta
    small = {"a": torch.tensor([0.3, 0.4])}
    clip_delta_(small, 1.0)
    assert torch.equal(small["a"], torch.tensor([0.3, 0.4]))


def test_a_clients_noise_share_has_std_z_c_over_sqrt_n():
    delta = {"w": torch.zeros(200_000)}
    add_distributed_noise_(
        delta, clip_norm=0.5, noise_multiplier=1.2, clients=9, generator=noise_generator(3)
    )
    # 1.2 * 0.5 / sqrt(9) = 0.2; 200,000 draws: the sample std is within 1 % (6-sigma margin)
    assert float(delta["w"].std()) == pytest.approx(0.2, rel=0.01)


# ------------------------------------------------------------------ the budget


def run_job(budget: PrivacyBudget, rounds: int, data: LocalData) -> list[float]:
    task = SyntheticTask(max_samples=200)
    model = task.build_model(seed=3)
    config = TrainConfig(1, 16, 0.1, seed=0)
    epsilons = []
    for round_number in range(rounds):
        plan = plan_round(data.train_examples, config.batch_size, config.local_epochs)
        assert not budget.would_exceed(plan)
        privacy = budget.dp_sgd_config(seed=round_number)
        result = task.train(model, data, replace(config, seed=round_number, privacy=privacy))
        epsilons.append(budget.record(result.privacy))
    return epsilons


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_reported_epsilon_agrees_with_dp_accounting_for_the_steps_actually_taken(target):
    _, data = synthetic()
    rounds, batch_size = 3, 16
    policy = DpSgdPolicy(epsilon=target, delta=DELTA, max_grad_norm=1.0)
    budget = PrivacyBudget.plan(policy, rounds, plan_round(data.train_examples, batch_size, 1))
    epsilons = run_job(budget, rounds, data)
    # what the job really did, counted from the data: Opacus samples with rate 1/ceil(N/B)
    batches = math.ceil(data.train_examples / batch_size)
    expected = independent_epsilon(budget.noise_multiplier, 1 / batches, rounds * batches)
    assert epsilons[-1] == pytest.approx(expected, rel=0.01)
    assert target - 0.05 <= epsilons[-1] <= target  # the derived noise spends the budget
    assert epsilons == sorted(epsilons) and epsilons[0] > 0


def test_would_exceed_stops_before_the_round_that_crosses_the_budget():
    plan = RoundPlan(sample_rate=0.1, steps=10)
    policy = DpSgdPolicy(epsilon=2.0, delta=DELTA, max_grad_norm=1.0)
    budget = PrivacyBudget.plan(policy, rounds=4, round_plan=plan)
    report = DpSgdReport(budget.noise_multiplier, 1.0, plan.sample_rate, plan.steps)
    for _ in range(4):  # the planned rounds all fit
        assert not budget.would_exceed(plan)
        budget.record(report)
    assert budget.epsilon <= 2.0 < budget.epsilon_after(plan)
    assert budget.would_exceed(plan)
    assert budget.rounds == 4 and budget.history == [(budget.noise_multiplier, 0.1, 40)]


def test_a_policy_with_noise_and_no_epsilon_reports_epsilon_and_never_stops():
    policy = DpSgdPolicy(noise_multiplier=1.1, delta=DELTA, max_grad_norm=1.0)
    budget = PrivacyBudget.plan(policy, rounds=1, round_plan=RoundPlan(0.05, 100))
    for _ in range(3):
        budget.record(DpSgdReport(1.1, 1.0, 0.05, 100))
        assert not budget.would_exceed(RoundPlan(1.0, 10_000))
    assert budget.epsilon == pytest.approx(independent_epsilon(1.1, 0.05, 300), rel=0.01)


def test_a_policy_with_both_uses_the_noise_and_caps_epsilon():
    policy = DpSgdPolicy(epsilon=1.0, noise_multiplier=5.0, delta=DELTA, max_grad_norm=1.0)
    budget = PrivacyBudget.plan(policy, rounds=100, round_plan=RoundPlan(0.1, 10))
    assert budget.noise_multiplier == 5.0
    assert budget.would_exceed(RoundPlan(1.0, 1000))


def test_the_budget_survives_a_restart_through_json(tmp_path):
    plan = RoundPlan(sample_rate=0.05, steps=20)
    policy = DpSgdPolicy(epsilon=3.0, delta=DELTA, max_grad_norm=0.7)
    budget = PrivacyBudget.plan(policy, rounds=5, round_plan=plan)
    report = DpSgdReport(budget.noise_multiplier, 0.7, plan.sample_rate, plan.steps)
    budget.record(report)
    path = tmp_path / "budget.json"
    budget.save(path)
    json.loads(path.read_text())  # plain JSON
    restored = PrivacyBudget.load(path, policy)
    assert (restored.noise_multiplier, restored.rounds) == (budget.noise_multiplier, 1)
    assert restored.epsilon == budget.epsilon
    assert restored.record(report) == budget.record(report)


def test_a_saved_budget_under_another_policy_or_malformed_is_refused(tmp_path):
    policy = DpSgdPolicy(noise_multiplier=1.0, delta=DELTA, max_grad_norm=1.0)
    path = tmp_path / "budget.json"
    PrivacyBudget(policy, 1.0).save(path)
    looser = DpSgdPolicy(noise_multiplier=0.5, delta=DELTA, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="different DP policy"):
        PrivacyBudget.load(path, looser)
    path.write_text('{"format": 1, "policy": {}}')
    with pytest.raises(ConfigError, match="malformed privacy budget"):
        PrivacyBudget.load(path, policy)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="cannot read the privacy budget"):
        PrivacyBudget.load(path, policy)


def test_a_round_trained_without_the_budgets_protection_is_refused():
    policy = DpSgdPolicy(noise_multiplier=1.0, delta=DELTA, max_grad_norm=1.0)
    budget = PrivacyBudget(policy, 1.0)
    with pytest.raises(ConfigError, match="without DP-SGD"):
        budget.record(None)
    with pytest.raises(ConfigError, match=r"noise multiplier 0\.5"):
        budget.record(DpSgdReport(0.5, 1.0, 0.1, 10))
    with pytest.raises(ConfigError, match="clipped at 2"):
        budget.record(DpSgdReport(1.0, 2.0, 0.1, 10))
    assert budget.rounds == 0 and budget.epsilon == 0


def test_the_training_seed_is_used_only_when_the_policy_allows_it():
    private = PrivacyBudget(DpSgdPolicy(noise_multiplier=1.0, delta=DELTA, max_grad_norm=1.0), 1.0)
    assert private.dp_sgd_config(seed=42).seed is None
    policy = DpSgdPolicy(noise_multiplier=1.0, delta=DELTA, max_grad_norm=1.0, reproducible=True)
    assert PrivacyBudget(policy, 1.0).dp_sgd_config(seed=42).seed == 42


def test_policy_needs_a_budget_or_a_noise_and_forbids_unknown_keys():
    with pytest.raises(ValidationError, match="epsilon, noise_multiplier, or both"):
        DpSgdPolicy(delta=DELTA, max_grad_norm=1.0)
    with pytest.raises(ValidationError, match="extra"):
        DpSgdPolicy.model_validate({"delta": DELTA, "max_grad_norm": 1, "epsilon": 1, "eps": 2})


def test_a_budget_that_no_noise_can_meet_is_a_config_error():
    policy = DpSgdPolicy(epsilon=1e-6, delta=1e-10, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="cannot be met"):
        PrivacyBudget.plan(policy, rounds=1000, round_plan=RoundPlan(1.0, 1000))
