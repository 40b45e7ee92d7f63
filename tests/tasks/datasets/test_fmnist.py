"""Fashion-MNIST is read from Debian's IDX files, with a clear message when they are missing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from fedsilo.common.errors import TaskLoadError
from fedsilo.tasks.datasets.fmnist import (
    DEFAULT_DIR,
    files_present,
    load_fashion_mnist,
    read_idx,
)

needs_files = pytest.mark.skipif(
    not files_present(),
    reason=f"Fashion-MNIST is not in {DEFAULT_DIR}: sudo apt-get install dataset-fashion-mnist",
)


def write_idx(path: Path, array: torch.Tensor, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.to(torch.uint8).numpy().tobytes())


def test_read_idx_returns_the_array_in_its_shape(tmp_path):
    array = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert torch.equal(read_idx(tmp_path / "a.gz"), array)


def test_read_idx_refuses_other_types_and_truncated_files(tmp_path):
    write_idx(tmp_path / "float.gz", torch.zeros(3), type_code=0x0D)
    with pytest.raises(TaskLoadError, match="unsigned bytes"):
        read_idx(tmp_path / "float.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as stream:
        stream.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(TaskLoadError, match="header says"):
        read_idx(tmp_path / "short.gz")


def test_missing_files_say_how_to_install_them(tmp_path):
    with pytest.raises(TaskLoadError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


@needs_files
def test_debian_files_hold_60000_training_and_10000_test_images():
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [6000] * 10
    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10_000, 28, 28)
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    assert load_fashion_mnist("train") is load_fashion_mnist("train")  # parsed once per process
