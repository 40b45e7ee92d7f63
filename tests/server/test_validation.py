"""Update checks: finite values and the L2 norm bound (reject or clip)."""

from __future__ import annotations

import math

import pytest
import torch

from fedsilo.common.errors import CodecError
from fedsilo.server.validation import bound_update, check_finite, clip_to_norm, update_norm

GLOBAL = {"w": torch.tensor([1.0, 1.0]), "steps": torch.tensor(5)}


def test_norm_is_the_l2_distance_over_floating_tensors_only():
    update = {"w": torch.tensor([4.0, 5.0]), "steps": torch.tensor(500)}
    assert update_norm(update, GLOBAL) == pytest.approx(5.0)  # (3, 4) -> 5; ints ignored


def test_update_over_the_bound_is_rejected_with_its_norm():
    with pytest.raises(CodecError, match="norm 5 exceeds the bound 1"):
        bound_update(
            {"w": torch.tensor([4.0, 5.0]), "steps": GLOBAL["steps"]}, GLOBAL, 1.0, "reject"
        )


def test_update_within_the_bound_passes_unchanged():
    update = {"w": torch.tensor([1.5, 1.0]), "steps": torch.tensor(5)}
    assert torch.equal(bound_update(update, GLOBAL, 1.0, "reject")["w"], update["w"])
    assert bound_update(update, GLOBAL, None, "reject")["w"] is update["w"]


def test_clipping_scales_the_change_down_to_the_bound():
    clipped = clip_to_norm({"w": torch.tensor([4.0, 5.0]), "steps": torch.tensor(9)}, GLOBAL, 2.5)
    assert torch.allclose(clipped["w"], torch.tensor([2.5, 3.0]))  # 1 + (3, 4) * 0.5
    assert update_norm(clipped, GLOBAL) == pytest.approx(2.5)
    assert int(clipped["steps"]) == 9 and clipped["w"].dtype == torch.float32


def test_non_finite_values_are_refused_naming_the_tensor():
    check_finite({"ok": torch.ones(3), "n": torch.tensor([1, 2])})
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(CodecError, match="'x'"):
            check_finite({"x": torch.tensor([0.0, bad])})
