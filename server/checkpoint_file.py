"""The checkpoint file: a JSON header and the tensors' raw bytes, streamed past the page cache.

    magic (12 bytes) | version (uint32 LE) | header length (uint64 LE) | header (JSON, UTF-8)
    | tensor bytes, each at its 64-byte aligned offset | xxh3-64 of all bytes before it (uint64 LE)

The header holds the round, the job's identity, the pending metrics row and, per tensor, its
group ("model" or "strategy"), name, dtype, shape, offset and length. Nothing in the file is
code and nothing is unpickled: loading parses JSON and copies bytes into fresh tensors.

Writing goes through ``os.write`` from the tensors' own memory (no serialized copy), 16 MiB at a
time; every 64 MiB written are flushed and advised out of the page cache, so a 1 GiB checkpoint
does not push the next round's pages out of memory. A writer can be told to stop between slices
(``cancel``): the temp file is removed and the old checkpoint stays.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash

from fedsilo.common.errors import ConfigError
from fedsilo.common.specs import DTYPES, byte_view, dtype_name
from fedsilo.common.tensor_stream import wire_ready

MAGIC = b"FEDSILO-CKPT"
VERSION = 3  # 3: raw tensor bytes with a JSON header (2 was a torch.save of the same content)
ALIGN = 64
SLICE_BYTES = 16 << 20
FLUSH_BYTES = 64 << 20
_PREFIX = struct.Struct("<12sIQ")
_FOOTER = struct.Struct("<Q")
MAX_HEADER_BYTES = 64 << 20


class CheckpointCancelledError(Exception):
    """A checkpoint write was told to stop; nothing was replaced."""


def save(
    path: Path,
    meta: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    cancel: threading.Event | None = None,
) -> None:
    """Write ``meta`` (JSON-able) and the tensors of ``groups`` to ``path`` atomically."""
    tensors = [
        (group, name, wire_ready(t)) for group, ts in groups.items() for name, t in ts.items()
    ]
    entries: list[dict[str, Any]] = []
    offsets: list[int] = []
    offset = 0
    for group, name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(
            {
                "group": group,
                "name": name,
                "dtype": dtype_name(tensor.dtype),
                "shape": list(tensor.shape),
                "offset": offset,
                "nbytes": nbytes,
            }
        )
        offsets.append(offset)
        offset += _aligned(nbytes)
    header = json.dumps({**meta, "tensors": entries}, allow_nan=False).encode()
    start = _aligned(_PREFIX.size + len(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        writer = _Writer(fd, cancel)
        writer.write(_PREFIX.pack(MAGIC, VERSION, len(header)) + header)
        writer.pad_to(start)
        for at, (_, _, tensor) in zip(offsets, tensors, strict=True):
            writer.pad_to(start + at)
            writer.write(byte_view(tensor).data)
        writer.finish()
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


class _Writer:
    """Sequential writes to ``fd``: hashed, flushed and advised out of the cache as they go."""

    def __init__(self, fd: int, cancel: threading.Event | None) -> None:
        self.fd = fd
        self.cancel = cancel
        self.hash = xxhash.xxh3_64()
        self.written = 0
        self.flushed = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for begin in range(0, len(view), SLICE_BYTES):
            if self.cancel is not None and self.cancel.is_set():
                raise CheckpointCancelledError("checkpoint cancelled")
            part = view[begin : begin + SLICE_BYTES]
            self.hash.update(part)
            while part:
                part = part[os.write(self.fd, part) :]
            self.written += min(SLICE_BYTES, len(view) - begin)
            if self.written - self.flushed >= FLUSH_BYTES:
                self._flush()

    def pad_to(self, position: int) -> None:
        if position > self.written:
            self.write(bytes(position - self.written))

    def finish(self) -> None:
        self.write(_FOOTER.pack(self.hash.intdigest()))
        os.fsync(self.fd)
        self._flush()

    def _flush(self) -> None:
        os.fdatasync(self.fd)
        if hasattr(os, "posix_fadvise"):  # written and on disk: no reason to keep it cached
            os.posix_fadvise(
                self.fd, self.flushed, self.written - self.flushed, os.POSIX_FADV_DONTNEED
            )
        self.flushed = self.written


def load(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read a checkpoint file; return its header and its tensors by group (ConfigError if bad)."""
    try:
        with open(path, "rb", buffering=0) as handle:
            return _read(path, handle)
    except OSError as exc:
        raise ConfigError(f"checkpoint {path} cannot be read: {exc.strerror}") from exc


def _read(path: Path, handle: Any) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    hasher = xxhash.xxh3_64()
    prefix = _exactly(handle, _PREFIX.size, path, hasher)
    magic, version, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC or version != VERSION:
        raise ConfigError(f"checkpoint {path} is not a fedsilo checkpoint of format {VERSION}")
    if header_len > MAX_HEADER_BYTES:
        raise ConfigError(f"checkpoint {path}: header of {header_len} bytes")
    try:
        header = json.loads(_exactly(handle, header_len, path, hasher))
        entries = list(header.pop("tensors"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"checkpoint {path}: the header does not parse: {exc}") from exc
    position = _PREFIX.size + header_len
    start = _aligned(position)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for entry in entries:
        tensor = _tensor_of(path, entry)
        target = start + int(entry["offset"])
        if target < position:
            raise ConfigError(f"checkpoint {path}: tensors overlap")
        _exactly(handle, target - position, path, hasher)
        view = byte_view(tensor).data
        _fill(handle, view, path, hasher)
        position = target + len(view)
        groups.setdefault(str(entry["group"]), {})[str(entry["name"])] = tensor
    digest = hasher.intdigest()
    footer = handle.read(_FOOTER.size + 1)
    if len(footer) != _FOOTER.size or _FOOTER.unpack(footer)[0] != digest:
        raise ConfigError(f"checkpoint {path} is damaged (checksum mismatch)")
    return header, groups


def _tensor_of(path: Path, entry: Mapping[str, Any]) -> torch.Tensor:
    try:
        dtype = DTYPES[str(entry["dtype"])]
        shape = [int(dim) for dim in entry["shape"]]
        tensor = torch.empty(shape, dtype=dtype)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"checkpoint {path}: a tensor entry is malformed: {exc}") from exc
    if tensor.numel() * tensor.element_size() != int(entry["nbytes"]):
        raise ConfigError(f"checkpoint {path}: tensor {entry['name']!r} has the wrong length")
    return tensor


def _exactly(handle: Any, count: int, path: Path, hasher: Any) -> bytes:
    data = handle.read(count) if count else b""
    if len(data) != count:
        raise ConfigError(f"checkpoint {path} is truncated")
    hasher.update(data)
    return bytes(data)


def _fill(handle: Any, view: memoryview, path: Path, hasher: Any) -> None:
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled : filled + SLICE_BYTES])
        if not count:
            raise ConfigError(f"checkpoint {path} is truncated")
        hasher.update(view[filled : filled + count])
        filled += count


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
