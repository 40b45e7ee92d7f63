"""Checks on received tensors that both ends make: finite values, and how far an update moved.

Both visit one tensor a block at a time (``codec.tensor_blocks``), so a big model costs one
small buffer, never a model-sized mask or a float64 copy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedsilo.common import codec

# dtypes numpy checks for NaN/infinity in one fast pass; others (bfloat16, float8) are upcast
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def _all_finite(tensors: Mapping[str, torch.Tensor], name: str) -> bool:
    mask: np.ndarray | None = None  # one small mask, reused
    for _, block in codec.tensor_blocks(tensors, name):
        if not (block.is_floating_point() or block.is_complex()):
            return True  # integers and booleans are always finite
        if block.dtype in _NUMPY_FLOATS:
            values = block.detach().cpu().numpy()
            if mask is None or len(mask) < len(values):
                mask = np.empty(len(values), dtype=bool)
            if not np.isfinite(values, out=mask[: len(values)]).all():
                return False
        # float8_e4m3fn has no isfinite kernel; float32 holds every value (NaN too) exactly
        elif not bool(torch.isfinite(block.float()).all()):
            return False
    return True


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Return the name of the first floating tensor holding NaN or infinity, else None."""
    for name in tensors:
        if not _all_finite(tensors, name):
            return name
    return None


def floating_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a CPU copy of the floating-point tensors of ``state`` (the round's reference)."""
    return {
        name: tensor.detach().to("cpu", copy=True)
        for name, tensor in state.items()
        if tensor.is_floating_point()
    }


def update_norm(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """Return the L2 norm of ``update - reference`` over the floating tensors of ``reference``."""
    total = 0.0
    for name, base_tensor in reference.items():
        base = base_tensor.reshape(-1)
        for start, block in codec.tensor_blocks(update, name):
            delta = block.double() - base[start : start + block.numel()].double()
            total += float(torch.dot(delta, delta))
    return float(total**0.5)
