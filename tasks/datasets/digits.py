"""The 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set, 1,797 images)."""

from __future__ import annotations

import functools

import torch

FEATURES = 64
CLASSES = 10
_MAX_PIXEL = 16.0


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features as float32 (1797, 64) scaled to [0, 1], labels as int64 (1797,))."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, only when used

    bunch = sklearn_digits()
    features = torch.as_tensor(bunch.data, dtype=torch.float32) / _MAX_PIXEL
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return features, labels
