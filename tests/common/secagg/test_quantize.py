"""The Z_2^32 encoding: no sum of n clients can wrap, the weight is exact, errors are bounded."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.common.errors import ConfigError, SecAggRefusedError
from fedsilo.common.secagg import Quantizer, SecAggConfig

CONFIG = SecAggConfig(clip_norm=2.0, max_weight=500, allow_unsigned=True)


def test_scale_and_range_follow_the_stated_formula() -> None:
    quantizer = Quantizer.for_round(CONFIG, 7)
    assert quantizer.word_bound == (2**31 - 1) // 7
    assert quantizer.scale == quantizer.word_bound / (500 * 2.0)


def test_the_extreme_updates_of_n_clients_sum_without_wrapping() -> None:
    n = 9
    quantizer = Quantizer.for_round(CONFIG, n)
    extreme = np.array([2.0, -2.0, 1e9, -1e9], dtype=np.float64)  # beyond B: clamped to +-B
    words = [quantizer.encode(extreme, 1.0, 500).astype(np.uint64) for _ in range(n)]
    total = (sum(words) % 2**32).astype(np.uint32)  # what the server's sum holds
    decoded = quantizer.decode(total)
    assert decoded == pytest.approx([n * 500 * 2.0, -n * 500 * 2.0] * 2, rel=1e-9)
    assert int(total.view(np.int32)[0]) == n * quantizer.word_bound <= 2**31 - 1
    weight = sum(int(quantizer.weight_word(500)[0]) for _ in range(n))
    assert weight == n * 500 < 2**32


def test_weights_overflowing_the_weight_word_are_a_config_error() -> None:
    config = SecAggConfig(clip_norm=1.0, max_weight=2**31)
    with pytest.raises(ConfigError, match="overflow the 32-bit weight word"):
        Quantizer.for_round(config, 2)


def test_rounding_is_deterministic_and_within_half_a_step() -> None:
    quantizer = Quantizer.for_round(CONFIG, 4)
    values = np.random.default_rng(0).uniform(-2, 2, 10_000)
    words = quantizer.encode(values, 1.0, 37)
    assert np.array_equal(words, quantizer.encode(values, 1.0, 37))
    error = np.abs(quantizer.decode(words) - values * 37)
    assert error.max() <= 0.5 / quantizer.scale * (1 + 1e-12)
    assert error.max() > 0.4 / quantizer.scale  # the bound is tight, not loose


def test_clipping_scales_a_long_delta_to_the_clip_norm() -> None:
    quantizer = Quantizer.for_round(CONFIG, 2)
    assert quantizer.clip_factor(1.0) == 1.0
    assert quantizer.clip_factor(8.0) == 0.25
    delta = np.array([6.0, 8.0])  # norm 10 -> clipped to norm 2: (1.2, 1.6)
    words = quantizer.encode(delta, quantizer.clip_factor(10.0), 1)
    assert quantizer.decode(words) == pytest.approx([1.2, 1.6], abs=1 / quantizer.scale)


def test_an_element_bound_below_the_norm_clamps_and_refines_the_grid() -> None:
    tight = SecAggConfig(clip_norm=2.0, max_weight=500, element_bound=0.5)
    loose, fine = Quantizer.for_round(CONFIG, 3), Quantizer.for_round(tight, 3)
    assert fine.scale == 4 * loose.scale
    words = fine.encode(np.array([0.7, -0.2]), 1.0, 1)
    assert fine.decode(words) == pytest.approx([0.5, -0.2], abs=1 / fine.scale)
    with pytest.raises(ValueError, match="element_bound above clip_norm"):
        SecAggConfig(clip_norm=1.0, max_weight=5, element_bound=2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_updates_are_refused(bad) -> None:
    quantizer = Quantizer.for_round(CONFIG, 2)
    with pytest.raises(SecAggRefusedError, match="not finite"):
        quantizer.encode(np.array([0.0, bad]), 1.0, 1)
    with pytest.raises(SecAggRefusedError, match="not a finite update"):
        quantizer.clip_factor(float(bad))


@pytest.mark.parametrize("weight", [0, -1, 501])
def test_weights_outside_the_agreed_range_are_refused(weight) -> None:
    with pytest.raises(SecAggRefusedError, match=r"outside 1\.\.500"):
        Quantizer.for_round(CONFIG, 2).weight_word(weight)


def test_the_settings_digest_changes_with_every_setting() -> None:
    digests = {
        CONFIG.digest(),
        CONFIG.model_copy(update={"clip_norm": 2.5}).digest(),
        CONFIG.model_copy(update={"max_weight": 501}).digest(),
        CONFIG.model_copy(update={"allow_unsigned": False}).digest(),
    }
    assert len(digests) == 4
