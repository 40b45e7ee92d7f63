"""Shamir sharing over 2^521 - 1: any t shares rebuild, t - 1 tell nothing, bad ones are refused."""

from __future__ import annotations

import itertools
import secrets

import pytest

from fedsilo.common.errors import SecAggRefusedError
from fedsilo.common.secagg import shamir
from tests.common.secagg.harness import seeded_entropy


def test_the_field_is_the_mersenne_prime_m521() -> None:
    p = shamir.PRIME
    assert p == 2**521 - 1 and p.bit_length() == 521
    # Fermat and Miller-Rabin witnesses (a composite fails most bases): a typo would show.
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        assert pow(base, p - 1, p) == 1
    assert (p.bit_length() + 7) // 8 == shamir.SHARE_BYTES


def test_every_subset_of_t_shares_rebuilds_the_secret() -> None:
    secret = secrets.token_bytes(32)
    holders = [0, 3, 4, 9, 12]
    shares = shamir.split(secret, holders, 3)
    assert all(len(share) == shamir.SHARE_BYTES for share in shares.values())
    for subset in itertools.combinations(holders, 3):
        assert shamir.reconstruct({h: shares[h] for h in subset}, 3) == secret
    assert shamir.reconstruct(shares, 3) == secret  # more than t: the lowest t are used


def test_a_secret_of_all_ones_and_of_zeros_round_trip() -> None:
    for secret in (b"\xff" * 32, b"\x00" * 32):
        shares = shamir.split(secret, [1, 2], 2)
        assert shamir.reconstruct(shares, 2) == secret


def test_t_minus_1_shares_fit_every_secret_equally() -> None:
    # t = 2: one share y1 = s + a * x1. For any candidate secret s' there is exactly one a'
    # with the same share, so a single share rules out no secret (information-theoretic).
    shares = shamir.split(b"\x01" * 32, [4, 5], 2, seeded_entropy(3))
    x1, y1 = 5, shamir.share_value(shares[4])
    for candidate in (0, 1, 2**255, shamir.PRIME - 1):
        slope = (y1 - candidate) * pow(x1, -1, shamir.PRIME) % shamir.PRIME
        assert (candidate + slope * x1) % shamir.PRIME == y1
    with pytest.raises(ValueError, match="1 shares, 2 needed"):
        shamir.reconstruct({4: shares[4]}, 2)


def test_seeded_entropy_makes_shares_reproducible_and_fresh_entropy_changes_them() -> None:
    secret = b"\x07" * 32
    first = shamir.split(secret, [0, 1, 2], 2, seeded_entropy(1))
    assert first == shamir.split(secret, [0, 1, 2], 2, seeded_entropy(1))
    assert first != shamir.split(secret, [0, 1, 2], 2, seeded_entropy(2))


def test_a_corrupt_share_rebuilds_another_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, [0, 1, 2], 2, seeded_entropy(5))
    # A small change moves the secret by the Lagrange weight (here 2 * delta): a wrong secret,
    # which only the owner's commitment can tell (the server checks it; see test_hostile.py).
    nudged = (shamir.share_value(shares[0]) + 1).to_bytes(shamir.SHARE_BYTES, "big")
    assert shamir.reconstruct({0: nudged, 1: shares[1]}, 2) != secret
    # A random one lands outside the 32-byte range but with probability 2^-265.
    garbage = (shamir.PRIME - 12345).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(SecAggRefusedError, match="a share is corrupt"):
        shamir.reconstruct({0: garbage, 1: shares[1]}, 2)


@pytest.mark.parametrize(
    ("share", "message"),
    [(b"\x00" * 65, "66 bytes, not 65"), (b"\xff" * 66, "not an element of the field")],
)
def test_malformed_shares_are_refused(share, message) -> None:
    with pytest.raises(SecAggRefusedError, match=message):
        shamir.share_value(share)


def test_bad_split_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="a secret is 32 bytes"):
        shamir.split(b"short", [0, 1], 2)
    with pytest.raises(ValueError, match="threshold 3 for 2 distinct holders"):
        shamir.split(b"\x00" * 32, [0, 1], 3)
    with pytest.raises(ValueError, match="distinct holders"):
        shamir.split(b"\x00" * 32, [0, 0, 1], 2)
