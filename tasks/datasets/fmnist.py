"""Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist`` package.

The package installs the original gzipped IDX files in ``/usr/share/datasets/fashion-mnist``:
a big-endian header (two zero bytes, type code 0x08 = uint8, number of dimensions, then each
dimension as uint32) followed by the raw bytes. Parsed arrays are kept in memory per process.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import torch

from fedsilo.common.errors import TaskLoadError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = "install it with 'sudo apt-get install dataset-fashion-mnist' (or 'make datasets')"
CLASSES = 10
IMAGE_SIZE = 28
_UINT8 = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Return the uint8 array stored in a gzipped IDX file."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:
        raise TaskLoadError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _UINT8:
        raise TaskLoadError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise TaskLoadError(f"{path} holds {len(data)} bytes, its header says {expected}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def files_present(folder: Path = DEFAULT_DIR) -> bool:
    """Whether ``folder`` holds all four Fashion-MNIST files."""
    return all((folder / name).is_file() for pair in FILES.values() for name in pair)


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(
    split: str = "train", folder: Path = DEFAULT_DIR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images as uint8 (n, 28, 28), labels as int64 (n,)) of ``split`` (train or test)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not files_present(folder):
        raise TaskLoadError(f"Fashion-MNIST is not in {folder}: {INSTALL_HINT}")
    image_file, label_file = FILES[split]
    images = read_idx(folder / image_file)
    labels = read_idx(folder / label_file).to(torch.int64)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
        raise TaskLoadError(
            f"Fashion-MNIST in {folder} has images {tuple(images.shape)}, labels {len(labels)}"
        )
    return images, labels
