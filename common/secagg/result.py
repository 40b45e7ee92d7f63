"""The server's running sum of masked words, and the unmasked result read back as floats."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedsilo.common.secagg.masks import DEFAULT_CHUNK_WORDS, WORD, MaskStream, Scratch, Words
from fedsilo.common.secagg.quantize import Quantizer


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

    def apply(self, stream: MaskStream, sign: int, scratch: Scratch) -> None:
        """Add (``sign`` 1) or subtract (-1) a whole mask stream, a scratch buffer at a time."""
        stream.add_to(self.words, sign, scratch)


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

    def mean_chunks(self, chunk_words: int = DEFAULT_CHUNK_WORDS) -> Iterator[NDArray[np.float64]]:
        """Yield the weighted mean of the survivors' clipped deltas, a chunk at a time."""
        model = self.words[:-1]
        for start in range(0, len(model), chunk_words):
            yield self.quantizer.decode(model[start : start + chunk_words]) / self.weight_sum

    def mean(self) -> NDArray[np.float64]:
        """Return the whole weighted mean (O(model) float64: for small models and tests)."""
        return self.quantizer.decode(self.words[:-1]) / self.weight_sum
