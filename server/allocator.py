"""Keep glibc's allocator from hoarding the memory of freed transfer buffers.

By default glibc raises its mmap threshold each time a big block is freed (up to 32 MiB) and
gives threads their own arenas (up to 8 per core). A server with a reader thread per client
stream then serves every 1 MiB message from some arena, and each arena keeps what was freed in
it: measured with 16 clients uploading a 256 MiB model (bench/aggregation_bench.py), 3.1 GiB
peak instead of 1.0 GiB. One arena and a fixed threshold above the message size keep messages
on one reused heap (as fast as before) while model-sized tensors get their own mappings,
handed back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
MIN_THRESHOLD_BYTES = 2 << 20
# A loop over a model in pieces keeps each temporary at most this big, so that it comes from the
# reused heap: at or above the threshold every allocation is a fresh mapping, page-faulted
# again (measured: the secure-aggregation mean of 64 MiB in 2 MiB float64 pieces, 5.7 s
# instead of 1.4 s in 1 MiB pieces).
SCRATCH_BYTES = MIN_THRESHOLD_BYTES // 2


def tune_for_streams(message_bytes: int) -> bool:
    """Use one arena and a fixed mmap threshold above ``message_bytes``; False off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    threshold = max(MIN_THRESHOLD_BYTES, 2 * message_bytes)
    return bool(mallopt(M_ARENA_MAX, 1)) and bool(mallopt(M_MMAP_THRESHOLD, threshold))
