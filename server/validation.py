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


def update_norm(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """Return the L2 norm of ``update - reference`` over all floating-point tensors."""
    total = 0.0
    for name, tensor in update.items():
        if tensor.is_floating_point():
            delta = tensor.double() - reference[name].double()
            total += float(torch.dot(delta.reshape(-1), delta.reshape(-1)))
    return float(total**0.5)


def clip_to_norm(
    update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], bound: float
) -> dict[str, torch.Tensor]:
    """Scale ``update - reference`` down to L2 norm ``bound`` (unchanged if already within)."""
    norm = update_norm(update, reference)
    if norm <= bound:
        return dict(update)
    scale = bound / norm
    clipped = {}
    for name, tensor in update.items():
        if tensor.is_floating_point():
            base = reference[name].double()
            clipped[name] = (base + (tensor.double() - base) * scale).to(tensor.dtype)
        else:
            clipped[name] = tensor
    return clipped


def bound_update(
    update: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    bound: float | None,
    action: str,
) -> dict[str, torch.Tensor]:
    """Apply the job's norm bound: pass, clip, or raise CodecError (action 'reject')."""
    if bound is None:
        return dict(update)
    if action == "clip":
        return clip_to_norm(update, reference, bound)
    norm = update_norm(update, reference)
    if norm > bound:
        raise CodecError(f"update L2 norm {norm:.4g} exceeds the bound {bound:g}")
    return dict(update)
