"""scikit-learn's bundled digits load as scaled float features and int labels."""

from __future__ import annotations

import torch

from fedsilo.tasks.datasets.digits import CLASSES, FEATURES, load_digits


def test_digits_are_1797_scaled_images_of_ten_classes():
    features, labels = load_digits()
    assert features.shape == (1797, FEATURES) and features.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert float(features.min()) == 0.0 and float(features.max()) == 1.0
    assert sorted(set(labels.tolist())) == list(range(CLASSES))
