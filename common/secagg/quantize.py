"""The update as words of Z_(2^32): clip, weight, scale, round; and the sum back to floats.

With n participants, weights w <= W (``max_weight``) and every element of the clipped delta in
[-B, B] (B = ``element_bound``, by default the clip norm C, which bounds every element of a
vector of norm <= C):

    Q = floor((2^31 - 1) / n)          the largest magnitude one client's word may hold
    s = Q / (W * B)                    the scale, the same for every client of the round
    q = rint(w * x * s)  in [-Q, Q]    two's complement in a uint32 word
    weight word = w                    exact; n * W < 2^32 is required

A sum of m <= n clients' words stays within [-(2^31 - 1), 2^31 - 1] (model words) and [0, 2^32)
(the weight word), so it never wraps and reads back exactly as int32 / uint32. Rounding is
deterministic (round half to even, in float64): the same update gives the same words on every
run, as the rest of fedsilo's arithmetic does; stochastic rounding would remove the bias but
needs seeded state and doubles the worst case. Error: each word is off by at most 1/2, so the
decoded sum of m clients is within m / (2 s) of sum(w * x) per element, and the weighted mean
within m / (2 s * sum(w)) = m * W * B / (2 * Q * sum(w)) of the exact weighted mean of the
clipped deltas (plus float64 rounding, ~1e-16 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedsilo.common.errors import ConfigError, SecAggRefusedError
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.masks import WORD, Words

INT32_MAX = (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class Quantizer:
    """The round's fixed-point encoding: its scale and the bounds it was derived from."""

    participants: int
    max_weight: int
    clip_norm: float
    bound: float

    @classmethod
    def for_round(cls, config: SecAggConfig, participants: int) -> Quantizer:
        """Return the encoding for a round of ``participants`` clients under ``config``."""
        if participants < 1:
            raise ConfigError("secure aggregation: a round needs participants")
        if participants * config.max_weight > UINT32_MAX:
            raise ConfigError(
                f"secure aggregation: {participants} clients x max_weight {config.max_weight}"
                " overflow the 32-bit weight word; lower max_weight"
            )
        return cls(participants, config.max_weight, config.clip_norm, config.bound)

    @property
    def word_bound(self) -> int:
        """Return Q: the largest magnitude of one client's model word."""
        return INT32_MAX // self.participants

    @property
    def scale(self) -> float:
        """Return s: words per unit of weight x delta."""
        return self.word_bound / (self.max_weight * self.bound)

    def clip_factor(self, norm: float) -> float:
        """Return the factor that clips a delta of L2 norm ``norm`` to the clip norm."""
        if not math.isfinite(norm) or norm < 0:
            raise SecAggRefusedError(f"the update's norm is {norm}: not a finite update")
        return 1.0 if norm <= self.clip_norm else self.clip_norm / norm

    def check_weight(self, weight: int) -> None:
        """Refuse a weight outside 1..max_weight."""
        if not 1 <= weight <= self.max_weight:
            raise SecAggRefusedError(f"weight {weight} is outside 1..{self.max_weight}")

    def encode(self, values: NDArray[np.floating], factor: float, weight: int) -> Words:
        """Return the words of ``values`` x ``factor`` (the clip) x ``weight``, clamped to +-B."""
        out = np.empty(len(values), dtype=WORD)
        self.encode_into(values, factor, weight, out)
        return out

    def encode_into(
        self,
        values: NDArray[np.floating],
        factor: float,
        weight: int,
        out: Words,
        scratch: NDArray[np.float64] | None = None,
    ) -> None:
        """Write the words of ``values`` (see ``encode``) into ``out``, of the same length.

        With ``scratch`` (float64), the work goes a scratch-length block at a time through it:
        no temporaries, and each block stays in cache from the multiply to the words.
        """
        if scratch is None:
            scratch = np.empty(len(values), dtype=np.float64)
        step = max(1, len(scratch))
        multiplier = factor * weight * self.scale
        limit = weight * self.bound * self.scale  # <= Q
        for start in range(0, len(values), step):
            part = values[start : start + step]
            scaled = scratch[: len(part)]
            # float32 in: each element widens to float64 exactly before the float64 multiply
            np.multiply(part, multiplier, out=scaled, dtype=np.float64)
            if not np.isfinite(scaled).all():
                raise SecAggRefusedError("the update holds values that are not finite")
            np.clip(scaled, -limit, limit, out=scaled)
            np.rint(scaled, out=scaled)
            target = out[start : start + len(part)].view(np.int32)
            np.copyto(target, scaled, casting="unsafe")  # exact: |scaled| <= Q < 2^31

    def weight_word(self, weight: int) -> Words:
        """Return the one word that carries the weight."""
        self.check_weight(weight)
        return np.array([weight], dtype=WORD)

    def decode(self, words: Words) -> NDArray[np.float64]:
        """Return sum(w * x) for summed model words (int32 two's complement over the scale)."""
        out = np.empty(len(words), dtype=np.float64)
        np.divide(words.view(np.int32), self.scale, out=out, dtype=np.float64)  # one pass
        return out

    def mean_error_bound(self, clients: int, weight_sum: int) -> float:
        """Return the largest error of the decoded weighted mean of ``clients`` per element."""
        return clients / (2.0 * self.scale * weight_sum)
