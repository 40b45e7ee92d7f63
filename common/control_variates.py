"""SCAFFOLD's control variates on the wire: which tensors they are and what they are called.

With ``JobConfig.control_variates`` (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378)
every floating-point tensor of the model has a control variate of its own dtype and shape. The
server's, ``c``, rides in each SyncModel stream after the model's tensors, as ``<name>#c``; the
change of a client's own, ``c_i+ - c_i``, rides in each update stream after the codec's
tensors, as ``<name>#dc``. Both lists follow from the model's specs alone, so each side checks
a header against them before it uses a byte, as for the model itself. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedsilo.common.specs import TensorSpec

SERVER_SUFFIX = "#c"  # the server's control variate c, in SyncModel streams
DELTA_SUFFIX = "#dc"  # the change of a client's control variate, in update streams


def controlled(model_specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """Return the model tensors that have a control variate: the floating-point ones."""
    return [spec for spec in model_specs if spec.dtype.is_floating_point]


def server_specs(model_specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """Return the specs of the server's control variate as a SyncModel stream carries them."""
    return [
        TensorSpec(spec.name + SERVER_SUFFIX, spec.dtype, spec.shape)
        for spec in controlled(model_specs)
    ]


def delta_specs(model_specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """Return the specs of a client's control-variate change as an update stream carries them."""
    return [
        TensorSpec(spec.name + DELTA_SUFFIX, spec.dtype, spec.shape)
        for spec in controlled(model_specs)
    ]


def zeros(specs: Sequence[TensorSpec]) -> dict[str, torch.Tensor]:
    """Return a zero tensor per spec, by name: every control variate's value before round 1."""
    return {spec.name: torch.zeros(spec.shape, dtype=spec.dtype) for spec in specs}


def suffixed(tensors: Mapping[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
    """Return ``tensors`` under their wire names (``name + suffix``)."""
    return {name + suffix: tensor for name, tensor in tensors.items()}


def unsuffixed(tensors: Mapping[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
    """Return the tensors whose wire name ends in ``suffix``, under their model names."""
    return {
        name.removesuffix(suffix): tensor
        for name, tensor in tensors.items()
        if name.endswith(suffix)
    }
