"""DP-FedAvg on the server: clipping, noise on the sum, both modes, and the accountant."""

from __future__ import annotations

import io
import math

import dp_accounting
import pytest
import torch
from dp_accounting import pld, rdp
from pydantic import ValidationError

from fedsilo.server.privacy import (
    PLD_DISCRETIZATION,
    DpFedAvgAccountant,
    DpFedAvgSettings,
    clip_update,
    delta_sum_from_update_sum,
    dp_fedavg_step,
    effective_noise_multiplier,
    round_noise_generator,
)
from fedsilo.tasks.privacy import add_distributed_noise_, noise_generator

DELTA = 1e-5


def settings(**changes: object) -> DpFedAvgSettings:
    values: dict[str, object] = {
        "noise_multiplier": 1.1,
        "clip_norm": 0.5,
        "clients_per_round": 4,
        "population": 4,
        "delta": DELTA,
        "seed": 9,
    }
    values.update(changes)
    return DpFedAvgSettings.model_validate(values)


def zeros() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(300, 500), "b": torch.zeros(50_000), "count": torch.tensor(3)}


def direct_epsilon(runs: list[tuple[float, int]], q: float, method: str) -> float:
    """Epsilon of the runs composed with dp-accounting in the test, independently of the module."""
    events = []
    for z, count in runs:
        gaussian = dp_accounting.GaussianDpEvent(z)
        step = gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        events.append(dp_accounting.SelfComposedDpEvent(step, count))
    if method == "rdp":
        accountant = rdp.RdpAccountant()
    else:
        accountant = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(DELTA))


# ------------------------------------------------------------------ noise


def test_central_noise_on_the_sum_has_std_z_c():
    config = settings()
    following = dp_fedavg_step(zeros(), zeros(), config, round_noise_generator(config, 1))
    # g = 0 and no deltas: g' = noise / n, so n * g' is the noise itself; 200,000 draws
    noise = torch.cat([following["w"].reshape(-1), following["b"]]) * config.clients_per_round
    assert float(noise.std()) == pytest.approx(1.1 * 0.5, rel=0.01)  # 1/sqrt(2N) = 0.16 %
    assert abs(float(noise.mean())) < 5 * 0.55 / math.sqrt(noise.numel())
    assert torch.equal(following["count"], torch.tensor(3))  # integer buffers are never noised


def test_distributed_mode_the_sum_of_n_client_shares_has_std_z_c():
    config = settings(mode="distributed", clients_per_round=16, population=100)
    total = zeros()
    for client in range(16):
        delta = zeros()
        add_distributed_noise_(
            delta, config.clip_norm, config.noise_multiplier, 16, noise_generator(client)
        )
        for name in ("w", "b"):
            total[name] += delta[name]
    assert config.client_noise_std == pytest.approx(1.1 * 0.5 / 4)
    noise = torch.cat([total["w"].reshape(-1), total["b"]])
    assert float(noise.std()) == pytest.approx(1.1 * 0.5, rel=0.01)
    # and the server adds nothing on top: g' = g + sum / n exactly
    expected = total["b"] / 16
    following = dp_fedavg_step(zeros(), total, config, round_noise_generator(config, 1))
    assert torch.equal(following["b"], expected)


def test_dp_fedavg_is_g_plus_clipped_sum_plus_noise_over_the_fixed_n():
    config = settings(clients_per_round=3, population=10, clip_norm=1.0)
    g = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(5)}
    updates = [  # deltas (3, 4) of norm 5 -> clipped to (0.6, 0.8); (0.1, 0) stays
        {"w": torch.tensor([4.0, 5.0]), "n": torch.tensor(99)},
        {"w": torch.tensor([1.1, 1.0]), "n": torch.tensor(99)},
    ]
    clipped = [clip_update(update, g, config.clip_norm) for update in updates]
    update_sum = {"w": clipped[0]["w"] + clipped[1]["w"], "n": torch.tensor(0)}
    delta_sum = delta_sum_from_update_sum(update_sum, g, count=2)
    assert torch.allclose(delta_sum["w"], torch.tensor([0.7, 0.8]))
    following = dp_fedavg_step(g, delta_sum, config, round_noise_generator(config, 2))
    noise = torch.randn(2, generator=round_noise_generator(config, 2)) * 1.1
    # only 2 of the 3 planned clients arrived: the denominator stays 3
    expected = torch.tensor([1.0, 1.0]) + (torch.tensor([0.7, 0.8]) + noise) / 3
    assert torch.allclose(following["w"], expected, atol=1e-6)
    assert torch.equal(following["n"], torch.tensor(5))  # the clients' counters never reach g


def test_seeded_noise_is_reproducible_per_round_and_unseeded_noise_is_not():
    seeded = settings()
    draws = [torch.randn(4, generator=round_noise_generator(seeded, r)) for r in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    secret = settings(seed=None)
    first, second = (torch.randn(4, generator=round_noise_generator(secret, 1)) for _ in "ab")
    assert not torch.equal(first, second)


def test_fewer_contributors_in_distributed_mode_lower_the_effective_noise():
    distributed = settings(mode="distributed", clients_per_round=16, population=16)
    assert effective_noise_multiplier(distributed, 16) == pytest.approx(1.1)
    assert effective_noise_multiplier(distributed, 4) == pytest.approx(1.1 * 0.5)
    assert effective_noise_multiplier(settings(), 1) == 1.1  # central: the server adds it all
    with pytest.raises(ValueError, match="contributors"):
        effective_noise_multiplier(distributed, 17)


def test_settings_refuse_a_sample_larger_than_the_population_and_unknown_keys():
    with pytest.raises(ValidationError, match="cannot exceed population"):
        settings(clients_per_round=5, population=4)
    with pytest.raises(ValidationError, match="extra"):
        settings(sigma=1.0)
    assert settings(clients_per_round=3, population=12).sampling_rate == 0.25


# ------------------------------------------------------------------ accountant


@pytest.mark.parametrize(("q", "noise"), [(1.0, [2.0] * 5), (0.1, [1.0] * 8 + [0.8] * 2)])
def test_the_accountant_matches_dp_accounting_computed_directly_by_rdp_and_pld(q, noise):
    accountant = DpFedAvgAccountant(q, DELTA)
    for z in noise:
        accountant.record_round(z)
    runs: list[tuple[float, int]] = []
    for z in noise:
        runs = [*runs[:-1], (z, runs[-1][1] + 1)] if runs and runs[-1][0] == z else [*runs, (z, 1)]
    both = accountant.epsilons()
    assert set(both) == {"rdp", "pld"}
    assert both["rdp"] == pytest.approx(direct_epsilon(runs, q, "rdp"), rel=1e-9)
    assert both["pld"] == pytest.approx(direct_epsilon(runs, q, "pld"), rel=1e-9)
    assert 0 < both["pld"] <= both["rdp"]  # PLD is the tighter of the two upper bounds here


def test_would_exceed_stops_before_the_round_that_crosses_the_target():
    target, z, q = 4.0, 1.0, 0.25
    accountant = DpFedAvgAccountant(q, DELTA)
    while not accountant.would_exceed(target, z) and accountant.rounds < 500:
        accountant.record_round(z)
    assert accountant.epsilon() <= target < accountant.epsilon_after(z)
    # the same stopping round, found with dp-accounting directly
    assert direct_epsilon([(z, accountant.rounds)], q, "rdp") <= target
    assert direct_epsilon([(z, accountant.rounds + 1)], q, "rdp") > target
    assert 1 < accountant.rounds < 500


def test_would_exceed_follows_the_chosen_bound_and_pld_allows_more():
    accountant = DpFedAvgAccountant(1.0, DELTA)
    for _ in range(20):
        accountant.record_round(4.0)
    by_rdp, by_pld = accountant.epsilon_after(4.0, "rdp"), accountant.epsilon_after(4.0, "pld")
    target = (by_rdp + by_pld) / 2  # round 21 crosses it by RDP's bound, not by PLD's
    assert by_pld < target < by_rdp
    assert accountant.would_exceed(target, 4.0, "rdp")
    assert not accountant.would_exceed(target, 4.0, "pld")


def test_the_accountant_state_survives_a_weights_only_checkpoint():
    accountant = DpFedAvgAccountant(0.2, DELTA)
    for z in (1.0, 1.0, 0.7):
        accountant.record_round(z)
    buffer = io.BytesIO()
    torch.save({"dp": accountant.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["dp"]
    restored = DpFedAvgAccountant.from_state_dict(state)
    assert restored.runs == [(1.0, 2), (0.7, 1)] and restored.rounds == 3
    assert restored.epsilon() == accountant.epsilon()


def test_a_malformed_accountant_state_is_refused():
    good = DpFedAvgAccountant(0.2, DELTA).state_dict()
    with pytest.raises(ValueError, match="malformed"):
        DpFedAvgAccountant.from_state_dict({**good, "rounds": [1], "noise_multipliers": []})
    with pytest.raises(ValueError, match="malformed"):
        DpFedAvgAccountant.from_state_dict({"delta": DELTA})
    with pytest.raises(ValueError, match="sampling_rate"):
        DpFedAvgAccountant.from_state_dict({**good, "sampling_rate": 1.5})


def test_an_empty_accountant_has_spent_nothing():
    accountant = DpFedAvgAccountant.for_job(settings(clients_per_round=2, population=8))
    assert accountant.sampling_rate == 0.25
    assert accountant.epsilons() == {"rdp": 0.0, "pld": 0.0}
