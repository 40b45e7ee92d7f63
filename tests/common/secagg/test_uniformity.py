"""One masked upload, as the server sees it, is uniform and independent of the plaintext.

Fixed seeds make every statistic below the same on every run: these are not flaky tests but
checks that would fail (as the plaintext itself does) if the masks left structure behind.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsilo.common.secagg import Quantizer
from tests.common.secagg.harness import make_setup, run_round, unsigned_config

WORDS = 1 << 18  # 1 MiB of upload: 2^20 bytes, 4,096 expected per byte value
P_MIN = 1e-3


@pytest.fixture(scope="module")
def upload_and_plain():
    """Client 0's masked upload of a highly structured update, and its plaintext words."""
    config = unsigned_config()
    n = 3
    ramp = np.linspace(-1.0, 1.0, WORDS, dtype=np.float32) * 0.001  # norm ~0.3 < C: no clip
    inputs = {c: (ramp * (c + 1), 10) for c in range(n)}
    uploads: dict[int, bytes] = {}
    run_round(make_setup(n, WORDS), config, inputs, uploads_seen=uploads, seed=42)
    plain = Quantizer.for_round(config, n).encode(inputs[0][0], 1.0, 10)
    masked = np.frombuffer(uploads[0], dtype="<u4")[:WORDS]
    return masked, plain


def _byte_uniformity(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def _limb_uniformity(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint16), minlength=1 << 16)  # 8 expected per limb value
    return float(stats.chisquare(counts).pvalue)


def _plain_bucket(plain: np.ndarray) -> np.ndarray:
    """The plaintext's sixteenth (by value) each word falls in."""
    values = plain.view(np.int32)
    return np.searchsorted(np.quantile(values, np.linspace(0, 1, 17)[1:-1]), values, side="right")


def _independence(masked: np.ndarray, plain: np.ndarray) -> float:
    """Chi-square of the 16 x 16 table: plaintext sixteenth x the masked word's top 4 bits."""
    plain_bucket = _plain_bucket(plain)
    masked_bucket = masked >> 28
    table = np.zeros((16, 16), dtype=np.int64)
    np.add.at(table, (plain_bucket, masked_bucket), 1)
    return float(stats.chi2_contingency(table).pvalue)


def test_masked_bytes_and_16_bit_limbs_are_uniform(upload_and_plain) -> None:
    masked, plain = upload_and_plain
    assert _byte_uniformity(masked) > P_MIN
    assert _limb_uniformity(masked) > P_MIN
    # The same test on the plaintext fails by a mile: it can tell structure apart.
    assert _byte_uniformity(plain) < 1e-12
    assert _limb_uniformity(plain) < 1e-12


def test_masked_words_are_independent_of_the_plaintext(upload_and_plain) -> None:
    masked, plain = upload_and_plain
    assert _independence(masked, plain) > P_MIN
    correlation = np.corrcoef(masked.astype(np.float64), plain.view(np.int32))[0, 1]
    assert abs(correlation) < 5 / np.sqrt(WORDS)  # 5 standard errors
    # Sanity of the independence test: a mask that left the top 4 bits to the plaintext fails.
    leaky = (_plain_bucket(plain).astype(np.uint32) << 28) | (masked & 0x0FFFFFFF)
    assert _byte_uniformity(leaky) > P_MIN  # bytes alone cannot see this leak ...
    assert _independence(leaky, plain) < 1e-12  # ... the independence test does
