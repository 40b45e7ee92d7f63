"""Checks an update must pass before it may touch the aggregate. Pure functions.

Every function takes the update as a Mapping and visits one tensor at a time, so an update
spilled to disk (``SpilledTensors``) is checked without being loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import NUMPY_FLOATS
from fedsilo.server.spill import tensor_blocks


def _all_finite(tensors: Mapping[str, torch.Tensor], name: str) -> bool:
    mask: np.ndarray | None = None  # one small mask, reused: a model-sized one costs memory
    for _, block in tensor_blocks(tensors, name):
        if not (block.is_floating_point() or block.is_complex()):
            return True  # integers and booleans are always finite
        if block.dtype in NUMPY_FLOATS:
            values = block.detach().cpu().numpy()
            if mask is None or len(mask) < len(values):
                mask = np.empty(len(values), dtype=bool)
            if not np.isfinite(values, out=mask[: len(values)]).all():
                return False
        elif not bool(torch.isfinite(block).all()):
            return False
    return True


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise CodecError naming the first floating tensor that holds NaN or infinity."""
    for name in tensors:
        if not _all_finite(tensors, name):
            raise CodecError(f"tensor {name!r} holds NaN or infinite values")


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def magnitude_limit(total_weight_bound: float) -> float:
    """Return the largest |value| an update may hold so that any weighted sum stays finite.

    With every weight at most its bound and the bounds summing to W, a sum of weighted values
    of magnitude at most F / (2 W) has magnitude at most F / 2: finite in float32, the dtype of
    the running sum. Honest models are many orders of magnitude below this.
    """
    return FLOAT32_MAX / (2.0 * max(total_weight_bound, 1.0))


def check_magnitude(tensors: Mapping[str, torch.Tensor], limit: float) -> None:
    """Raise CodecError naming the first floating tensor with |value| > ``limit`` (NaN too)."""
    for name in tensors:
        for _, block in tensor_blocks(tensors, name):
            if not (block.is_floating_point() or block.is_complex()):
                break
            # float8: torch computes little on it; widen first
            values = block.float() if block.dtype.itemsize == 1 else block
            if not bool(values.abs().le(limit).all()):  # NaN compares False too
                raise CodecError(
                    f"tensor {name!r} holds NaN or infinite values, or values "
                    f"beyond {limit:.3g} in magnitude"
                )


def update_norm(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """Return the L2 norm of ``update - reference`` over the floating-point tensors of the model
    (tensors beyond the model's, such as SCAFFOLD's control-variate change, are not in it)."""
    total = 0.0
    for name in update:
        if name not in reference:
            continue
        base = reference[name].reshape(-1)
        for start, block in tensor_blocks(update, name):
            if not block.is_floating_point():
                break
            delta = block.double() - base[start : start + block.numel()].double()
            total += float(torch.dot(delta, delta))
    return float(total**0.5)


class ClippedUpdate(Mapping[str, torch.Tensor]):
    """An update whose change to ``reference`` is scaled by ``scale``, computed on access."""

    def __init__(
        self,
        update: Mapping[str, torch.Tensor],
        reference: Mapping[str, torch.Tensor],
        scale: float,
    ) -> None:
        self.update = update
        self._reference = reference
        self._scale = scale

    def __getitem__(self, name: str) -> torch.Tensor:
        base = self._reference.get(name)
        if base is None or not base.is_floating_point():
            return self.update[name]
        clipped = torch.empty_like(base)
        out, flat_base = clipped.reshape(-1), base.reshape(-1)
        for start, block in tensor_blocks(self.update, name):
            stop = start + block.numel()
            block_base = flat_base[start:stop].double()
            out[start:stop] = (block_base + (block.double() - block_base) * self._scale).to(
                base.dtype
            )
        return clipped

    def __iter__(self) -> Iterator[str]:
        return iter(self.update)

    def __len__(self) -> int:
        return len(self.update)


def clip_to_norm(
    update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], bound: float
) -> Mapping[str, torch.Tensor]:
    """Scale ``update - reference`` down to L2 norm ``bound`` (unchanged if already within)."""
    norm = update_norm(update, reference)
    if norm <= bound:
        return update
    return ClippedUpdate(update, reference, bound / norm)


def bound_update(
    update: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    bound: float | None,
    action: str,
) -> Mapping[str, torch.Tensor]:
    """Apply the job's norm bound: pass, clip, or raise CodecError (action 'reject')."""
    if bound is None:
        return update
    if action == "clip":
        return clip_to_norm(update, reference, bound)
    norm = update_norm(update, reference)
    if norm > bound:
        raise CodecError(f"update L2 norm {norm:.4g} exceeds the bound {bound:g}")
    return update
