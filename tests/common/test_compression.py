"""Update compression: wire specs, round trips within bounds, error feedback, hostile input."""

from __future__ import annotations

import math

import pytest
import torch

from fedsilo.common.compression import (
    CODECS,
    INDEX,
    QUANT,
    SCALE,
    VALUES,
    ClientCompressor,
    Compression,
    decode,
    encode,
    topk_count,
    wire_specs,
)
from fedsilo.common.errors import CodecError, ConfigError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import specs_of

SHAPES = [(), (0,), (7,), (3, 0), (0, 3), (4, 5), (2, 3, 2, 2), (1, 1)]
SETTINGS = [
    Compression(name, topk_fraction=fraction, per_channel=per_channel)
    for name in CODECS
    for fraction, per_channel in [(0.3, False), (1.0, True)]
]
SETTING_IDS = [f"{s.codec}-{s.topk_fraction}-{s.per_channel}" for s in SETTINGS]


def model_pair(
    seed: int = 0, dtype: torch.dtype = torch.float32, step: float = 0.01
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A global model of many shapes plus integer buffers, and a trained update of it."""
    gen = torch.Generator().manual_seed(seed)
    global_state: dict[str, torch.Tensor] = {}
    for index, shape in enumerate(SHAPES):
        global_state[f"layer{index}.weight"] = torch.randn(shape, generator=gen).to(dtype)
    global_state["bn.num_batches_tracked"] = torch.tensor(12, dtype=torch.int64)
    global_state["mask"] = torch.tensor([True, False, True])
    global_state["counts"] = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    update = {}
    for name, tensor in global_state.items():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=gen).to(dtype)
            update[name] = tensor + step * noise
        elif tensor.dtype == torch.bool:
            update[name] = ~tensor
        else:
            update[name] = tensor + 3
    return global_state, update


def zeros_like_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(tensor) for name, tensor in state.items()}


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_wire_specs_are_the_specs_of_what_encode_produces(setting, dtype):
    global_state, update = model_pair(dtype=dtype)
    wire = encode(update, global_state, setting, residual={})
    assert specs_of(wire) == wire_specs(specs_of(global_state), setting)
    full = decode(wire, global_state, setting)
    assert specs_of(full) == specs_of(global_state)


def test_lossy_codecs_send_fewer_bytes_than_full_weights():
    global_state, _ = model_pair()
    specs = specs_of(global_state)
    full = sum(spec.nbytes for spec in wire_specs(specs, Compression("none")))
    sizes = {
        name: sum(spec.nbytes for spec in wire_specs(specs, Compression(name, 0.1)))
        for name in CODECS
    }
    assert sizes["none"] == sizes["delta"] == full
    assert sizes["fp16"] == sizes["bf16"] < full
    assert sizes["int8"] < sizes["fp16"]
    assert sizes["topk"] < sizes["int8"]


def test_topk_sends_exactly_k_entries_of_each_tensor():
    global_state, update = model_pair()
    setting = Compression("topk", topk_fraction=0.25)
    wire = encode(update, global_state, setting)
    for name, tensor in global_state.items():
        if not tensor.is_floating_point():
            continue
        k = topk_count(tensor.numel(), 0.25)
        assert k == (0 if tensor.numel() == 0 else max(1, math.ceil(0.25 * tensor.numel())))
        assert wire[name + INDEX].shape == (k,) and wire[name + VALUES].shape == (k,)
        delta = (update[name] - tensor).reshape(-1)
        if k:  # the sent entries are the largest in magnitude
            sent = delta[wire[name + INDEX].long()].abs()
            assert float(sent.min()) >= float(delta.abs().kthvalue(delta.numel() - k + 1).values)


def test_wire_names_that_collide_with_the_model_are_a_config_error():
    specs = specs_of({"a": torch.zeros(2), "a#q": torch.zeros(2, dtype=torch.int8)})
    with pytest.raises(ConfigError, match="collide"):
        wire_specs(specs, Compression("int8"))


# ---------------------------------------------------------------- round trips


def test_none_is_bit_exact_and_copies_nothing():
    global_state, update = model_pair()
    wire = encode(update, global_state, Compression())
    assert all(wire[name] is update[name] for name in update)
    full = decode(wire, global_state, Compression())
    for name, tensor in update.items():
        assert torch.equal(full[name], tensor) and full[name].dtype == tensor.dtype


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_integer_and_bool_buffers_are_bit_exact_under_every_codec(setting):
    global_state, update = model_pair()
    full = decode(encode(update, global_state, setting, {}), global_state, setting)
    for name in ("bn.num_batches_tracked", "mask", "counts"):
        assert full[name].dtype == update[name].dtype
        assert torch.equal(full[name], update[name])


def test_delta_reconstructs_within_three_half_ulps_of_the_larger_operand():
    global_state, update = model_pair(step=10.0)
    full = decode(
        encode(update, global_state, Compression("delta")), global_state, Compression("delta")
    )
    eps = torch.finfo(torch.float32).eps
    for name, tensor in update.items():
        if tensor.is_floating_point():
            bound = 1.5 * eps * torch.maximum(tensor.abs(), global_state[name].abs())
            assert bool(((full[name] - tensor).abs() <= bound).all()), name


@pytest.mark.parametrize(
    ("name", "relative", "absolute"),
    [("fp16", 2.0**-11, 2.0**-25), ("bf16", 2.0**-8, 2.0**-134)],
)
def test_casts_of_deltas_stay_within_half_a_unit_of_the_cast_type(name, relative, absolute):
    # Against a zero global model the decoded weights are exactly the cast deltas.
    _, update = model_pair(step=0.01)
    zero = zeros_like_state(update)
    setting = Compression(name)
    full = decode(encode(update, zero, setting), zero, setting)
    for key, tensor in update.items():
        if tensor.is_floating_point():
            error = (full[key].double() - tensor.double()).abs()
            assert bool((error <= relative * tensor.double().abs() + absolute).all()), key


def test_fp16_clamps_deltas_beyond_its_range_instead_of_sending_infinity():
    global_state = {"w": torch.zeros(3)}
    setting = Compression("fp16")
    full = decode(
        encode({"w": torch.tensor([1e6, -1e6, 1.0])}, global_state, setting), global_state, setting
    )
    assert torch.equal(full["w"], torch.tensor([65504.0, -65504.0, 1.0]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_error_is_at_most_half_a_step_per_element(per_channel):
    _, update = model_pair(step=0.05)
    zero = zeros_like_state(update)
    setting = Compression("int8", per_channel=per_channel)
    wire = encode(update, zero, setting)
    full = decode(wire, zero, setting)
    for name, tensor in update.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        scale = wire[name + SCALE].double()
        if scale.dim() == 1:
            assert per_channel and scale.shape == (tensor.shape[0],)
            scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))
        else:
            assert scale.dim() == 0
        error = (full[name].double() - tensor.double()).abs()
        assert bool((error <= scale / 2 * (1 + 1e-6) + 1e-12).all()), name
        assert int(wire[name + QUANT].abs().max()) == 127  # the full range is used


def test_int8_of_a_zero_delta_is_exact_zero():
    global_state = {"w": torch.ones(2, 3)}
    setting = Compression("int8", per_channel=True)
    wire = encode({"w": torch.ones(2, 3)}, global_state, setting)
    assert torch.equal(wire["w#scale"], torch.zeros(2))
    assert torch.equal(decode(wire, global_state, setting)["w"], torch.ones(2, 3))


def test_lossy_codecs_are_applied_to_the_delta_not_the_weights():
    # Large weights, tiny change: a cast of the weights would lose the change entirely.
    global_state = {"w": torch.full((4,), 1000.0)}
    update = {"w": global_state["w"] + torch.tensor([0.01, -0.02, 0.03, 0.0])}
    for name in ("fp16", "bf16", "int8"):
        setting = Compression(name)
        full = decode(encode(update, global_state, setting), global_state, setting)
        assert torch.allclose(full["w"] - 1000.0, update["w"] - 1000.0, atol=2e-3), name


# ---------------------------------------------------------------- error feedback


def test_topk_error_feedback_makes_the_sent_sum_converge_to_the_true_sum():
    gen = torch.Generator().manual_seed(3)
    zero = {"w": torch.zeros(200), "n": torch.tensor(0)}
    compressor = ClientCompressor(Compression("topk", topk_fraction=0.05))
    drift = torch.randn(200, generator=gen) * 0.1
    true_sum = torch.zeros(200, dtype=torch.float64)
    sent_sum = torch.zeros(200, dtype=torch.float64)
    gaps = []
    for _ in range(400):
        delta = drift + 0.05 * torch.randn(200, generator=gen)
        compressor.remember_global(zero)
        wire = compressor.encode({"w": delta, "n": torch.tensor(0)})
        assert wire["w#val"].shape == (10,)
        sent = decode(wire, zero, compressor.setting)["w"]
        true_sum += delta.double()
        sent_sum += sent.double()
        assert compressor.residual is not None
        # Nothing is lost: what was sent plus what is held back is everything.
        assert torch.allclose(sent_sum + compressor.residual["w"].double(), true_sum, atol=1e-3)
        gaps.append(float((true_sum - sent_sum).norm() / true_sum.norm()))
    assert gaps[-1] < 0.05 and gaps[-1] < gaps[20] / 5


def test_without_error_feedback_topk_loses_the_small_entries_for_good():
    zero = {"w": torch.zeros(100)}
    setting = Compression("topk", topk_fraction=0.01)
    delta = {"w": torch.linspace(1.0, 2.0, 100)}
    sent = sum(decode(encode(delta, zero, setting), zero, setting)["w"] for _ in range(10))
    assert int((sent != 0).sum()) == 1  # the same single entry every round


def test_client_compressor_keeps_no_copy_for_none_and_needs_the_global_otherwise():
    state = {"w": torch.ones(3)}
    plain = ClientCompressor(Compression())
    plain.remember_global(state)
    assert plain.encode(state)["w"] is state["w"] and plain.residual is None
    lossy = ClientCompressor(Compression("int8"))
    with pytest.raises(RuntimeError, match="remember_global"):
        lossy.encode(state)
    lossy.remember_global(state)
    state["w"] += 1.0  # training changes the model in place; the copy must not follow
    full = decode(lossy.encode(state), {"w": torch.ones(3)}, lossy.setting)
    assert torch.allclose(full["w"], torch.full((3,), 2.0))


# ---------------------------------------------------------------- hostile input


def topk_wire(index: list[int], values: list[float] | None = None) -> dict[str, torch.Tensor]:
    values = values if values is not None else [1.0] * len(index)
    return {
        "w#idx": torch.tensor(index, dtype=torch.int32),
        "w#val": torch.tensor(values, dtype=torch.float32),
    }


@pytest.mark.parametrize(
    "index",
    [[0, 10], [-1, 3], [2, 2], [5, 1], [3, 2147483647], [-2147483648, 0]],
    ids=["past-end", "negative", "repeated", "unordered", "huge", "most-negative"],
)
def test_hostile_topk_indices_are_refused_and_nothing_is_written(index):
    global_state = {"w": torch.zeros(10)}
    setting = Compression("topk", topk_fraction=0.2)
    with pytest.raises(CodecError, match="top-k indices"):
        decode(topk_wire(index), global_state, setting)
    assert torch.equal(global_state["w"], torch.zeros(10))


def test_valid_topk_indices_are_added_at_their_places():
    setting = Compression("topk", topk_fraction=0.2)
    full = decode(topk_wire([0, 9], [1.5, -2.0]), {"w": torch.ones(10)}, setting)
    expected = torch.ones(10)
    expected[0], expected[9] = 2.5, -1.0
    assert torch.equal(full["w"], expected)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_int8_scale_that_is_not_finite_or_negative_is_refused(bad):
    wire = {"w#q": torch.ones(2, 3, dtype=torch.int8), "w#scale": torch.tensor(bad)}
    with pytest.raises(CodecError, match="scale"):
        decode(wire, {"w": torch.zeros(2, 3)}, Compression("int8"))


def test_wire_tensors_that_do_not_match_the_specs_are_refused():
    global_state = {"w": torch.zeros(2, 3)}
    setting = Compression("int8", per_channel=True)
    wrong_scale = {"w#q": torch.ones(2, 3, dtype=torch.int8), "w#scale": torch.tensor(1.0)}
    with pytest.raises(CodecError, match="does not match"):
        decode(wrong_scale, global_state, setting)
    with pytest.raises(CodecError, match="tensors"):
        decode({"w#q": torch.ones(2, 3, dtype=torch.int8)}, global_state, setting)
    with pytest.raises(CodecError, match="does not match"):
        decode({"w": torch.zeros(2, 3)}, global_state, Compression("delta"))


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_topk_fraction_outside_zero_one_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match="topk_fraction"):
        Compression("topk", topk_fraction=fraction)


def test_setting_travels_in_init_config_and_unknown_codecs_are_refused():
    setting = Compression("topk", topk_fraction=0.125, per_channel=True)
    assert Compression.from_proto(setting.to_proto()) == setting
    assert Compression.from_proto(pb.Compression()) == Compression()
    assert Compression.from_proto(pb.Compression(codec="int8")).codec == "int8"
    with pytest.raises(ConfigError, match="zstd"):
        Compression.from_proto(pb.Compression(codec="zstd"))


def test_a_non_finite_round_does_not_poison_the_topk_residual():
    setting = Compression(codec="topk", topk_fraction=0.5)
    reference = {"w": torch.zeros(4)}
    residual: dict[str, torch.Tensor] = {}
    encode({"w": torch.tensor([1.0, float("nan"), 0.0, 0.0])}, reference, setting, residual)
    assert torch.equal(residual["w"], torch.zeros(4))
    wire = encode({"w": torch.tensor([0.0, 0.0, 3.0, 4.0])}, reference, setting, residual)
    assert torch.isfinite(wire["w#val"]).all()
