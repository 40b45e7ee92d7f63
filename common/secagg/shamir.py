"""Shamir secret sharing of 32-byte secrets over the prime field of p = 2^521 - 1.

Why this field: every 32-byte string is an element (p > 2^256), so secrets need no encoding or
rejection, and p is the Mersenne prime M521 (proven prime in 1952; the modulus of NIST P-521),
a prime nobody has to take on trust. A share is the pair (x, f(x)) for a random polynomial f of
degree t - 1 with f(0) the secret; x is the holder's client id + 1 (never 0), so a share on the
wire is only the 66 big-endian bytes of f(x) and the holder is known from who sends it.

Security: any t - 1 shares are uniformly distributed whatever the secret (information-
theoretic); t shares determine it. Shares are not verifiable on their own: the protocol checks a
reconstructed secret against what its owner committed to in its signed keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from fedsilo.common.errors import SecAggRefusedError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32

Entropy = Callable[[int], bytes]


def _x(holder: int) -> int:
    return holder + 1


def _random_element(entropy: Entropy) -> int:
    # 66 random bytes reduced mod p: the bias is below 2^-7 * 2^-521 per value, far below any
    # concern, and a seeded test source stays reproducible.
    return int.from_bytes(entropy(SHARE_BYTES + 16), "big") % PRIME


def split(
    secret: bytes, holders: list[int], threshold: int, entropy: Entropy = secrets.token_bytes
) -> dict[int, bytes]:
    """Split a 32-byte ``secret`` into a share per holder (client id); ``threshold`` rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(holders) or len(set(holders)) != len(holders):
        raise ValueError(f"threshold {threshold} for {len(holders)} distinct holders")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_element(entropy) for _ in range(threshold - 1)]
    shares = {}
    for holder in holders:
        x = _x(holder)
        value = 0
        for coefficient in reversed(coefficients):  # Horner
            value = (value * x + coefficient) % PRIME
        shares[holder] = value.to_bytes(SHARE_BYTES, "big")
    return shares


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Rebuild the secret from ``threshold`` or more shares keyed by holder (the lowest ids)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    chosen = sorted(shares)[:threshold]
    points = [(_x(holder), share_value(shares[holder])) for holder in chosen]
    secret = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * x_j % PRIME  # (0 - x_j) / (x_i - x_j), signs folded in
                denominator = denominator * (x_j - x_i) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecAggRefusedError("shares do not rebuild a 32-byte secret: a share is corrupt")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_value(share: bytes) -> int:
    """Return the field element a share's bytes hold; refuse a wrong length or a value >= p."""
    if len(share) != SHARE_BYTES:
        raise SecAggRefusedError(f"a share is {SHARE_BYTES} bytes, not {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise SecAggRefusedError("a share is not an element of the field")
    return value
