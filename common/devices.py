"""Where training runs: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re

import torch

from fedsilo.common.errors import ConfigError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(spec: str) -> torch.device:
    """Turn a --device value into a torch.device; ConfigError if that device is not here."""
    if not re.match(DEVICE_PATTERN, spec):
        raise ConfigError(f"device: {spec!r} is not auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {spec} asked for, but there are {torch.cuda.device_count()} GPUs"
            )
    return device
