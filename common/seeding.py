"""Seeds derived from (job seed, round, client, ...) so every run of a config draws the same."""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """Return a stable 63-bit seed for the given parts (never Python's salted ``hash``)."""
    text = "/".join(str(part) for part in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
