"""Finite values and update norms, as both daemons check received tensors."""

from __future__ import annotations

import pytest
import torch

from fedsilo.common.tensor_checks import (
    BLOCK_BYTES,
    first_non_finite,
    floating_copy,
    update_norm,
)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn]
)
def test_the_first_tensor_holding_nan_or_infinity_is_named(dtype: torch.dtype) -> None:
    tensors = {"ok": torch.ones(3, dtype=dtype), "bad": torch.ones(5).to(dtype)}
    assert first_non_finite(tensors) is None
    tensors["bad"][3] = float("nan")
    assert first_non_finite(tensors) == "bad"


def test_integer_tensors_are_always_finite() -> None:
    assert first_non_finite({"count": torch.tensor([2**62]), "mask": torch.ones(2).bool()}) is None


def test_the_norm_is_the_l2_distance_over_floating_tensors() -> None:
    reference = {"w": torch.zeros(2, 2), "h": torch.zeros(3, dtype=torch.float16)}
    update = {"w": torch.tensor([[3.0, 0], [0, 0]]), "h": torch.tensor([0, 4.0, 0]).half()}
    update["steps"] = torch.tensor(7)  # not floating: not in the reference, not counted
    assert update_norm(update, reference) == 5.0  # sqrt(3^2 + 4^2)


def test_a_big_tensor_is_summed_in_pieces_as_precisely_as_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = {"w": torch.randn(3 << 20, generator=generator)}
    update = {"w": reference["w"] + 1e-3 * torch.randn(3 << 20, generator=generator)}
    exact = float(((update["w"].double() - reference["w"].double()) ** 2).sum()) ** 0.5
    assert update_norm(update, reference) == pytest.approx(exact, rel=1e-6)


def test_a_copy_is_refreshed_in_place_while_the_layout_holds() -> None:
    state = {"w": torch.ones(4), "n": torch.tensor(1)}
    copy = floating_copy(state)
    assert list(copy) == ["w"] and copy["w"].data_ptr() != state["w"].data_ptr()
    state["w"].fill_(2.0)
    again = floating_copy(state, into=copy)
    assert again is copy and torch.equal(copy["w"], torch.full((4,), 2.0))
    bigger = floating_copy({"w": torch.ones(5)}, into=copy)
    assert bigger is not copy and bigger["w"].shape == (5,)


def test_nan_past_the_first_block_of_a_big_tensor_is_found() -> None:
    values = torch.ones((BLOCK_BYTES // 4) + 1000)  # two blocks of float32
    assert first_non_finite({"w": values}) is None
    values[-1] = float("inf")
    assert first_non_finite({"w": values}) == "w"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_the_norm_over_several_pieces_matches_float64_in_every_dtype(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    reference = {"w": torch.randn(200_000, generator=generator).to(dtype), "b": torch.zeros(3)}
    update = {
        "w": (reference["w"].double() + torch.rand(200_000, generator=generator)).to(dtype),
        "b": torch.tensor([0.0, 2.0, 0.0]),
    }
    exact = float(((update["w"].double() - reference["w"].double()) ** 2).sum() + 4.0) ** 0.5
    assert update_norm(update, reference) == pytest.approx(exact, rel=1e-5)


def test_tensors_that_require_grad_are_checked_and_measured() -> None:
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    assert first_non_finite({"w": weight}) is None
    assert update_norm({"w": weight}, {"w": torch.zeros(2)}) == 5.0
