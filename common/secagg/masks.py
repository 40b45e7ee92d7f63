"""Masks: a 32-byte seed expanded into uint32 words by AES-128-CTR, read chunk by chunk.

A stream holds one cipher state and writes through a caller's scratch buffer, so masking a
vector of any length costs O(chunk) memory however many masks are applied. Words are the
keystream's bytes read little-endian; the AES key is HKDF-SHA256(seed) (16 bytes), the initial
counter block zero (block i of the stream is AES(key, i as a 128-bit big-endian counter), so a
stream can start at any word: ``MaskStream(seed, start=w)`` gives the same words as reading
and dropping ``w`` words first, which lets several threads expand one mask over disjoint
ranges). AES-CTR rather than ChaCha20: with AES-NI it expands 1.8x faster here
(9.1 against 5.2 GB/s on the build machine, `bench/secagg_bench.py`), and every server CPU
since 2010 has AES instructions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

WORD = np.dtype("<u4")
WORD_BYTES = 4
DEFAULT_CHUNK_WORDS = 1 << 18  # 1 MiB of words, the wire's default chunk size
# Masks are added a block at a time, every stream over one block before the next block, so
# that the words make one pass through memory whatever the number of streams. Block sizes of
# 16K to 256K words cost the same within 10 % on the build machine (4 streams + add over 64
# MiB: 0.036-0.041 CPU s); 32K words keep a block, its keystream and the cipher's zero input
# (3 x 128 KiB) inside one core's L2 cache.
BLOCK_WORDS = 1 << 15
_AES_BLOCK = 16

Words = NDArray[np.uint32]


class Scratch:
    """Reusable buffers for up to ``max_words`` keystream words at a time."""

    def __init__(self, max_words: int = BLOCK_WORDS) -> None:
        self.max_words = max_words
        self._zeros = bytes(max_words * WORD_BYTES)
        # update_into wants room for one block beyond the input.
        self._out = bytearray(max_words * WORD_BYTES + _AES_BLOCK)
        self._zeros_view = memoryview(self._zeros)

    def keystream(self, encryptor: CipherContext, count: int) -> Words:
        """Fill and return a view of the next ``count`` words of ``encryptor``'s keystream."""
        if count > self.max_words:
            raise ValueError(f"{count} words exceed the scratch buffer's {self.max_words}")
        size = count * WORD_BYTES
        written = encryptor.update_into(self._zeros_view[:size], self._out)
        assert written == size
        return np.frombuffer(self._out, dtype=WORD, count=count)


class MaskStream:
    """The expansion of one seed into mask words, consumed in order."""

    def __init__(self, seed: bytes, start: int = 0) -> None:
        if len(seed) != 32:
            raise ValueError(f"a mask seed is 32 bytes, not {len(seed)}")
        if start < 0:
            raise ValueError(f"a mask stream starts at word 0 or later, not {start}")
        key = HKDF(hashes.SHA256(), 16, salt=None, info=b"fedsilo-secagg-v1 prg").derive(seed)
        block, skip = divmod(start * WORD_BYTES, _AES_BLOCK)
        counter = block.to_bytes(_AES_BLOCK, "big")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        if skip:
            self._encryptor.update(bytes(skip))

    def next(self, count: int) -> Words:
        """Return the next ``count`` words as a new array."""
        data = self._encryptor.update(bytes(count * WORD_BYTES))
        return np.frombuffer(data, dtype=WORD).copy()

    def add_to(self, out: Words, sign: int, scratch: Scratch) -> None:
        """Add (``sign`` 1) or subtract (-1) the next ``len(out)`` words into ``out``, mod 2^32."""
        done = 0
        while done < len(out):
            count = min(len(out) - done, scratch.max_words)
            words = scratch.keystream(self._encryptor, count)
            target = out[done : done + count]
            if sign > 0:
                np.add(target, words, out=target)
            else:
                np.subtract(target, words, out=target)
            done += count


def add_masks(words: Words, streams: Sequence[tuple[MaskStream, int]], scratch: Scratch) -> None:
    """Add each (stream, sign) into ``words``, mod 2^32: all streams over a block, block by block.

    The same result as adding each stream over the whole of ``words`` in turn (each stream's
    words are read in order either way), with one pass over memory instead of one per stream.
    """
    for start in range(0, len(words), scratch.max_words):
        block = words[start : start + scratch.max_words]
        for stream, sign in streams:
            stream.add_to(block, sign, scratch)
