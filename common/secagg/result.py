"""The server's running sum of masked words, and the unmasked result read back as floats."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedsilo.common.secagg.masks import (
    DEFAULT_CHUNK_WORDS,
    WORD,
    MaskStream,
    Scratch,
    Words,
    add_masks,
)
from fedsilo.common.secagg.quantize import Quantizer

# Below 16 MiB of sum per thread, one thread does it all: a thread costs ~0.1 ms to start,
# 16 MiB of masks ~3 ms per stream.
PARALLEL_MIN_WORDS = 1 << 22
WORDS_PER_AES_BLOCK = 4


class RunningSum:
    """A vector of uint32 words that chunks are added to and masks removed from, mod 2^32."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._words: Words | None = None

    def allocate(self) -> None:
        """Allocate the sum (zero pages: memory is touched as chunks arrive)."""
        if self._words is None:
            self._words = np.zeros(self.length, dtype=WORD)

    @property
    def words(self) -> Words:
        """Return the sum itself (not a copy)."""
        self.allocate()
        assert self._words is not None
        return self._words

    def add(self, offset: int, chunk: bytes | memoryview) -> int:
        """Add a chunk of little-endian words at word ``offset``; return how many it held."""
        words = np.frombuffer(chunk, dtype=WORD)
        target = self.words[offset : offset + len(words)]
        np.add(target, words, out=target)
        return len(words)

    def subtract(self, offset: int, chunk: bytes | memoryview) -> int:
        """Subtract a chunk added before at word ``offset``; return how many it held."""
        words = np.frombuffer(chunk, dtype=WORD)
        target = self.words[offset : offset + len(words)]
        np.subtract(target, words, out=target)
        return len(words)

    def apply_masks(self, masks: Sequence[tuple[bytes, int]], threads: int = 1) -> None:
        """Add (sign 1) or subtract (-1) the mask of each seed over the whole sum.

        With ``threads`` > 1 and a large sum, disjoint ranges of the sum are done at once, each
        by its own thread with its own streams started at the range's first word (AES-CTR
        seeks) and its own scratch; AES and numpy's adds release the GIL. The words are the
        same whatever the split: each range gets exactly the mask words of its positions.
        """
        words = self.words

        def one(begin: int, end: int) -> None:
            streams = [(MaskStream(seed, start=begin), sign) for seed, sign in masks]
            add_masks(words[begin:end], streams, Scratch())

        in_ranges(len(words), threads, one)


def in_ranges(length: int, threads: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(begin, end)`` over ``split_ranges``, each range on its own thread if several."""
    ranges = split_ranges(length, threads)
    if len(ranges) == 1:
        work(*ranges[0])
        return
    with ThreadPoolExecutor(len(ranges), thread_name_prefix="secagg-range") as pool:
        for future in [pool.submit(work, begin, end) for begin, end in ranges]:
            future.result()


def split_ranges(length: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``length`` words into at most ``parts`` ranges of whole AES blocks, none too small."""
    size = max(-(-length // max(1, parts)), PARALLEL_MIN_WORDS)
    size += -size % WORDS_PER_AES_BLOCK  # a range starts on a block: no keystream to skip
    return [(begin, min(begin + size, length)) for begin in range(0, max(length, 1), size)]


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum: length model words (sum of w * x, quantized) and the weight word."""

    words: Words
    quantizer: Quantizer
    survivors: tuple[int, ...]  # the clients whose updates the sum holds
    dropped: tuple[int, ...]  # the clients that advertised keys but are not in the sum

    @property
    def model_words(self) -> NDArray[np.int32]:
        """Return the exact integer sum of the survivors' quantized updates (a view)."""
        return self.words[:-1].view(np.int32)

    @property
    def weight_sum(self) -> int:
        """Return the exact sum of the survivors' weights."""
        return int(self.words[-1])

    def error_bound(self) -> float:
        """Return the largest error per element of the weighted mean (quantization)."""
        return self.quantizer.mean_error_bound(len(self.survivors), self.weight_sum)

    def mean_chunks(
        self, chunk_words: int = DEFAULT_CHUNK_WORDS, begin: int = 0, end: int | None = None
    ) -> Iterator[NDArray[np.float64]]:
        """Yield the weighted mean of the survivors' clipped deltas, a chunk at a time.

        ``begin`` and ``end`` select positions of the model vector (default: all of it).
        """
        model = self.words[:-1]
        stop = len(model) if end is None else min(end, len(model))
        for start in range(begin, stop, chunk_words):
            mean = self.quantizer.decode(model[start : min(start + chunk_words, stop)])
            np.divide(mean, self.weight_sum, out=mean)
            yield mean

    def mean(self) -> NDArray[np.float64]:
        """Return the whole weighted mean (O(model) float64: for small models and tests)."""
        return self.quantizer.decode(self.words[:-1]) / self.weight_sum
