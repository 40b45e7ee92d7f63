"""Checks an update must pass before it may touch the aggregate. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedsilo.common.errors import CodecError


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise CodecError naming the first floating tensor that holds NaN or infinity."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise CodecError(f"tensor {name!r} holds NaN or infinite values")
