"""Make glibc's allocator hand big freed buffers back to the system at once.

By default glibc raises its mmap threshold each time a big block is freed (up to 32 MiB), so
after the first few transfers every 1 MiB message buffer comes from a per-thread arena, and an
arena keeps what is freed inside it. With one reader thread per client stream, a server ends up
holding hundreds of MiB of freed message buffers (measured: bench/aggregation_bench.py). A
fixed threshold gives each block of 256 KiB or more its own mapping, returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 << 10


def return_big_blocks_promptly() -> bool:
    """Fix glibc's mmap threshold at 256 KiB; return False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
