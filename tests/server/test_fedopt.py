"""FedAvgM, FedAdagrad, FedAdam and FedYogi against server updates computed by hand."""

from __future__ import annotations

import io

import pytest
import torch
from torch.testing import assert_close

from fedsilo.server.strategies import make_strategy
from fedsilo.server.strategies.fedavgm import FedAvgM
from fedsilo.server.strategies.fedopt import FedAdagrad, FedAdam, FedYogi, adaptive_step

NAMES = ["fedavgm", "fedadagrad", "fedadam", "fedyogi"]


def w(*values: float) -> dict[str, torch.Tensor]:
    """A one-tensor model ``{"w": values}`` in float32."""
    return {"w": torch.tensor(values)}


def shifted(state: dict[str, torch.Tensor], *delta: float) -> dict[str, torch.Tensor]:
    """The mean of client models that lies ``delta`` away from ``state``."""
    return {"w": state["w"] + torch.tensor(delta)}


def test_fedavgm_matches_two_rounds_by_hand():
    strategy = FedAvgM(server_learning_rate=0.5, momentum=0.9)
    # Round 1: delta = [3, 1] - [1, 2] = [2, -1]; v = 0.9 * 0 + delta = [2, -1];
    #          g = [1, 2] + 0.5 * [2, -1] = [2, 1.5].
    g1 = strategy.next_global(w(1.0, 2.0), w(3.0, 1.0))
    assert_close(g1, w(2.0, 1.5))
    # Round 2: delta = [2, 3.5] - [2, 1.5] = [0, 2]; v = 0.9 * [2, -1] + [0, 2] = [1.8, 1.1];
    #          g = [2, 1.5] + 0.5 * [1.8, 1.1] = [2.9, 2.05].
    g2 = strategy.next_global(g1, w(2.0, 3.5))
    assert_close(g2, w(2.9, 2.05))
    assert_close(strategy.state_dict()["v/w"], torch.tensor([1.8, 1.1]))


def test_fedadagrad_matches_two_rounds_by_hand():
    strategy = FedAdagrad(eta=0.5, beta1=0.5, tau=1.0, initial_v=0.0)
    # Round 1: delta = [4, -2] - [1, 2] = [3, -4]; m = 0.5 * 0 + 0.5 * delta = [1.5, -2];
    #          v = 0 + delta^2 = [9, 16], sqrt(v) = [3, 4];
    #          g = [1, 2] + 0.5 * [1.5 / (3 + 1), -2 / (4 + 1)] = [1 + 0.1875, 2 - 0.2].
    g1 = strategy.next_global(w(1.0, 2.0), w(4.0, -2.0))
    assert_close(g1, w(1.1875, 1.8))
    # Round 2: delta = [0, 3]; m = 0.5 * [1.5, -2] + 0.5 * [0, 3] = [0.75, 0.5];
    #          v = [9, 16] + [0, 9] = [9, 25], sqrt(v) = [3, 5];
    #          g = [1.1875, 1.8] + 0.5 * [0.75 / 4, 0.5 / 6] = [1.28125, 1.8416667].
    g2 = strategy.next_global(g1, shifted(g1, 0.0, 3.0))
    assert_close(g2, w(1.28125, 1.8416667))
    state = strategy.state_dict()
    assert_close(state["m/w"], torch.tensor([0.75, 0.5]))
    assert_close(state["v/w"], torch.tensor([9.0, 25.0]))


def test_fedadam_matches_two_rounds_by_hand_without_bias_correction():
    strategy = FedAdam(eta=0.1, tau=1.0, initial_v=0.0)  # beta1 = 0.9, beta2 = 0.99
    # Round 1: delta = [11, 2] - [1, 2] = [10, 0]; m = 0.1 * delta = [1, 0];
    #          v = 0.99 * 0 + 0.01 * [100, 0] = [1, 0], sqrt(v) = [1, 0];
    #          g = [1, 2] + 0.1 * [1 / (1 + 1), 0 / (0 + 1)] = [1.05, 2].
    #          (Adam's bias correction scales round 1's step by sqrt(1 - 0.99) / (1 - 0.9) = 1.)
    g1 = strategy.next_global(w(1.0, 2.0), w(11.0, 2.0))
    assert_close(g1, w(1.05, 2.0))
    # Round 2: delta = [0, 30]; m = 0.9 * [1, 0] + 0.1 * [0, 30] = [0.9, 3];
    #          v = 0.99 * [1, 0] + 0.01 * [0, 900] = [0.99, 9], sqrt(v) = [0.9949874, 3];
    #          g = [1.05, 2] + 0.1 * [0.9 / 1.9949874, 3 / 4] = [1.05 + 0.0451131, 2.075].
    #          (Adam's bias correction would scale this step by sqrt(1 - 0.99^2) / (1 - 0.9^2)
    #          = 0.742, to [0.0335, 0.0557], so these numbers tell the two apart.)
    g2 = strategy.next_global(g1, shifted(g1, 0.0, 30.0))
    assert_close(g2, w(1.0951131, 2.075))
    state = strategy.state_dict()
    assert_close(state["m/w"], torch.tensor([0.9, 3.0]))
    assert_close(state["v/w"], torch.tensor([0.99, 9.0]))


def test_fedyogi_matches_two_rounds_by_hand():
    strategy = FedYogi(eta=0.1, tau=1.0)  # beta1 = 0.9, beta2 = 0.99, v starts at tau^2 = 1
    # Round 1: delta = [11, 2.5] - [1, 2] = [10, 0.5], delta^2 = [100, 0.25];
    #          sign(v - delta^2) = sign([1 - 100, 1 - 0.25]) = [-1, +1];
    #          v = [1, 1] - 0.01 * [100, 0.25] * [-1, +1] = [2, 0.9975]  (Adam: [1.99, 0.9925]);
    #          m = 0.1 * delta = [1, 0.05];
    #          g = [1, 2] + 0.1 * [1 / (sqrt(2) + 1), 0.05 / (sqrt(0.9975) + 1)]
    #            = [1 + 0.1 / 2.4142136, 2 + 0.005 / 1.9987492] = [1.0414214, 2.0025016].
    g1 = strategy.next_global(w(1.0, 2.0), w(11.0, 2.5))
    assert_close(g1, w(1.0414214, 2.0025016))
    # Round 2: delta = [2, 0], delta^2 = [4, 0]; sign([2 - 4, 0.9975 - 0]) = [-1, +1];
    #          v = [2, 0.9975] - 0.01 * [4, 0] * [-1, +1] = [2.04, 0.9975];
    #          m = 0.9 * [1, 0.05] + 0.1 * [2, 0] = [1.1, 0.045];
    #          g = g1 + 0.1 * [1.1 / (sqrt(2.04) + 1), 0.045 / (sqrt(0.9975) + 1)]
    #            = g1 + [0.11 / 2.4282857, 0.0045 / 1.9987492]
    #            = [1.0414214 + 0.0452994, 2.0025016 + 0.0022514] = [1.0867208, 2.0047530].
    g2 = strategy.next_global(g1, shifted(g1, 2.0, 0.0))
    assert_close(g2, w(1.0867208, 2.0047530))
    state = strategy.state_dict()
    assert_close(state["m/w"], torch.tensor([1.1, 0.045]))
    assert_close(state["v/w"], torch.tensor([2.04, 0.9975]))


def test_adaptive_step_leaves_its_inputs_unchanged():
    g, delta, m, v = torch.ones(2), torch.tensor([1.0, -1.0]), torch.zeros(2), torch.ones(2)
    copies = [t.clone() for t in (g, delta, m, v)]
    adaptive_step(g, delta, m, v, rule="yogi", eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    for before, after in zip(copies, (g, delta, m, v), strict=True):
        assert torch.equal(before, after)


def test_v_starts_at_tau_squared_unless_given():
    assert FedAdam(tau=0.5).options.initial_v == 0.25
    assert FedAdagrad().options.initial_v == pytest.approx(1e-6)
    assert FedYogi(initial_v=0).options.initial_v == 0.0
    strategy = FedAdagrad(tau=0.5)
    strategy.next_global(w(0.0), w(0.0))  # delta 0: v stays at its start
    assert torch.equal(strategy.state_dict()["v/w"], torch.tensor([0.25]))


def test_fedavgm_with_defaults_takes_the_mean_in_its_first_round():
    # v = delta, g + 1.0 * delta = mean: FedAvg's first step.
    assert_close(FedAvgM().next_global(w(1.0, -2.0), w(0.5, 4.0)), w(0.5, 4.0))


def model(seed: int) -> dict[str, torch.Tensor]:
    """A small model: two float tensors and an integer buffer."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(3, 2, generator=generator),
        "layer.bias": torch.randn(3, generator=generator),
        "bn.num_batches_tracked": torch.tensor(seed, dtype=torch.int64),
    }


def checkpointed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` after a torch.save / weights_only torch.load round trip, as checkpoints do."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, torch.Tensor] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize("name", NAMES)
def test_resuming_from_state_dict_continues_bit_identically(name):
    means = [model(seed) for seed in (1, 2, 3)]
    straight = make_strategy(name, {})
    g_straight = model(0)
    for mean in means:
        g_straight = straight.next_global(g_straight, mean)

    first = make_strategy(name, {})
    g = model(0)
    for mean in means[:2]:
        g = first.next_global(g, mean)
    resumed = make_strategy(name, {})
    resumed.load_state_dict(checkpointed(first.state_dict()))
    g = resumed.next_global(g, means[2])

    for key, tensor in g_straight.items():
        assert torch.equal(g[key], tensor), key
    want, got = straight.state_dict(), resumed.state_dict()
    assert sorted(want) == sorted(got)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key
    assert int(got["step"]) == 3


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_are_step_and_per_tensor_buffers(name):
    strategy = make_strategy(name, {})
    assert set(strategy.state_dict()) == {"step"}
    strategy.next_global(model(0), model(1))
    state = strategy.state_dict()
    groups = ["v"] if name == "fedavgm" else ["m", "v"]
    assert set(state) == {"step"} | {
        f"{group}/layer.{part}" for group in groups for part in ("weight", "bias")
    }
    assert state["step"].dim() == 0
    assert int(state["step"]) == 1


@pytest.mark.parametrize("name", NAMES)
def test_integer_buffers_take_the_mean_value(name):
    strategy = make_strategy(name, {})
    new = strategy.next_global(model(0), model(7))
    assert new["bn.num_batches_tracked"].dtype == torch.int64
    assert int(new["bn.num_batches_tracked"]) == 7


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("dtype", "state_dtype"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_floating_tensors_keep_their_dtype_and_step_in_a_wider_one(name, dtype, state_dtype):
    strategy = make_strategy(name, {})
    new = strategy.next_global(
        {"w": torch.tensor([1.0, 2.0], dtype=dtype)}, {"w": torch.tensor([2.0, 0.0], dtype=dtype)}
    )
    assert new["w"].dtype == dtype
    assert strategy.state_dict()["v/w"].dtype == state_dtype


def test_make_strategy_passes_options():
    strategy = make_strategy("fedadam", {"eta": 0.1})
    assert isinstance(strategy, FedAdam)
    assert strategy.options.eta == 0.1
    assert strategy.options.beta2 == 0.99
    momentum = make_strategy("fedavgm", {"server_learning_rate": 0.5, "momentum": 0.0})
    assert isinstance(momentum, FedAvgM)
    assert (momentum.server_learning_rate, momentum.momentum) == (0.5, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused(name):
    with pytest.raises(ValueError, match="rejected its options"):
        make_strategy(name, {"learning_rate": 0.1})


def test_fedadagrad_has_no_beta2():
    with pytest.raises(ValueError, match="rejected its options"):
        make_strategy("fedadagrad", {"beta2": 0.99})


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fedavgm", {"server_learning_rate": 0.0}),
        ("fedavgm", {"momentum": 1.0}),
        ("fedadam", {"eta": -0.1}),
        ("fedadam", {"beta1": 1.0}),
        ("fedyogi", {"beta2": -0.1}),
        ("fedyogi", {"tau": 0.0}),
        ("fedadagrad", {"initial_v": -1.0}),
        ("fedadagrad", {"eta": float("nan")}),
    ],
)
def test_out_of_range_option_is_refused(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        make_strategy(name, options)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_state_key_is_refused(name):
    strategy = make_strategy(name, {})
    strategy.next_global(model(0), model(1))
    state = strategy.state_dict()
    with pytest.raises(ValueError, match="unknown strategy state key"):
        make_strategy(name, {}).load_state_dict({**state, "z/layer.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="unknown strategy state key"):
        make_strategy(name, {}).load_state_dict({**state, "momentum": torch.zeros(3)})


def test_state_without_step_or_with_mismatched_buffers_is_refused():
    strategy = FedAdam()
    strategy.next_global(w(1.0), w(2.0))
    state = strategy.state_dict()
    with pytest.raises(ValueError, match="step"):
        FedAdam().load_state_dict({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(ValueError, match="different tensors"):
        FedAdam().load_state_dict({k: v for k, v in state.items() if k != "v/w"})
    with pytest.raises(ValueError, match="step 0"):
        FedAdam().load_state_dict({**state, "step": torch.tensor(0)})


def test_state_of_another_model_is_refused_at_the_next_round():
    strategy = FedYogi()
    strategy.next_global(w(1.0, 2.0), w(2.0, 3.0))
    resumed = FedYogi()
    resumed.load_state_dict(strategy.state_dict())
    with pytest.raises(ValueError, match="the model needs"):
        resumed.next_global(w(1.0, 2.0, 3.0), w(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="floating-point tensors are"):
        resumed.next_global({"u": torch.ones(2)}, {"u": torch.ones(2)})
