"""The transfer ceilings: two processes move the bytes both ways in fedsilo's pattern of rounds."""

from __future__ import annotations

import pytest

from bench.streams import measure


@pytest.mark.parametrize("kind", ["tcp", "grpc"])
def test_every_round_is_timed_both_ways(kind: str) -> None:
    seconds = measure(kind, 3 << 20, rounds=2, timeout=60)
    halves = {"down_second_half_s", "up_second_half_s"} if kind == "tcp" else set()
    assert set(seconds) == {"down_s", "up_s"} | halves
    for way, times in seconds.items():
        assert len(times) == 2, way
        # the sender's first byte comes before the receiver's last, and loopback moves 3 MiB
        # in well under a minute
        assert all(0 < t < 60 for t in times), (way, times)
    for way in ("down", "up") if kind == "tcp" else ():
        # the second half of a transfer is part of it: never longer than the whole
        pairs = zip(seconds[f"{way}_second_half_s"], seconds[f"{way}_s"], strict=True)
        assert all(0 <= half <= whole for half, whole in pairs), way


def test_a_refused_transfer_is_an_error_not_a_figure() -> None:
    with pytest.raises(ValueError):
        measure("tcp", 0)
