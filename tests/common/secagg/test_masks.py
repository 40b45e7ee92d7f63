"""Mask streams: chunking never changes the words, signs cancel, seeds give independent masks."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.common.secagg.masks import WORD, MaskStream, Scratch, add_masks

SEED = bytes(range(32))


def test_words_do_not_depend_on_how_they_are_read() -> None:
    whole = MaskStream(SEED).next(10_000)
    stream = MaskStream(SEED)
    parts = [stream.next(count) for count in (1, 7, 4096, 3, 5893)]
    assert np.array_equal(np.concatenate(parts), whole)
    out = np.zeros(10_000, dtype=WORD)
    MaskStream(SEED).add_to(out, 1, Scratch(max_words=333))  # many scratch refills
    assert np.array_equal(out, whole)


def test_adding_and_subtracting_the_same_stream_cancels_mod_2_32() -> None:
    values = np.arange(5000, dtype=WORD) * np.uint32(2654435761)  # wraps: any words
    out = values.copy()
    scratch = Scratch(1024)
    MaskStream(SEED).add_to(out, 1, scratch)
    assert not np.array_equal(out, values)
    MaskStream(SEED).add_to(out, -1, scratch)
    assert np.array_equal(out, values)


def test_the_stream_is_aes_128_ctr_keyed_by_hkdf_of_the_seed() -> None:
    # The wire contract, recomputed from the primitives: another implementation must match.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(hashes.SHA256(), 16, salt=None, info=b"fedsilo-secagg-v1 prg").derive(SEED)
    keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(64))
    assert MaskStream(SEED).next(16).tobytes() == keystream


def test_different_seeds_give_unrelated_words() -> None:
    a = MaskStream(SEED).next(1 << 16)
    b = MaskStream(bytes(31) + b"\x01").next(1 << 16)
    assert np.mean(a == b) < 1e-3


def test_bad_seeds_and_oversized_reads_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 16"):
        MaskStream(bytes(16))
    with pytest.raises(ValueError, match="exceed the scratch buffer"):
        Scratch(8).keystream(object(), 9)


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 1023, 4096, 70_001])
def test_a_stream_started_at_a_word_gives_the_words_from_there(start: int) -> None:
    # AES-CTR seeks: block i is AES(key, i), so any word can begin a stream (threads' ranges).
    whole = MaskStream(SEED).next(start + 600)
    assert np.array_equal(MaskStream(SEED, start=start).next(600), whole[start:])


def test_a_negative_start_is_refused() -> None:
    with pytest.raises(ValueError, match="word 0 or later"):
        MaskStream(SEED, start=-1)


def test_masks_added_block_by_block_equal_each_stream_added_whole() -> None:
    values = np.arange(10_000, dtype=WORD) * np.uint32(2654435761)
    seeds = [(bytes([i]) * 32, sign) for i, sign in ((1, 1), (2, -1), (3, 1))]
    one_by_one = values.copy()
    for seed, sign in seeds:
        MaskStream(seed).add_to(one_by_one, sign, Scratch(10_000))
    blocked = values.copy()
    add_masks(blocked, [(MaskStream(seed), sign) for seed, sign in seeds], Scratch(333))
    assert np.array_equal(blocked, one_by_one)
