"""The WAN emulator measured against itself, in real namespaces: the round trip it is set to,
and the rate it is set to. Skipped without root, iproute2, a C compiler or /dev/net/tun."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.wan import probe
from bench.wan.link import Link, Profile, available, ensure_delayline

RTT_MS, RATE_MBIT = 20.0, 40.0
# A deep buffer (0.8 s at 40 Mbit/s): a Python sender that a loaded box stalls for a while still
# finds the link busy, so what arrives is the link's rate, not the sender's.
QUEUE_BYTES = 4_000_000


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    """A 40 Mbit/s link with a 20 ms round trip between two namespaces."""
    why = available()
    if why is not None:
        pytest.skip(f"no emulated links here: {why}")
    binary = ensure_delayline(Path(tmp_path_factory.mktemp("delayline")) / "delayline")
    profile = Profile(
        "test",
        rtt_ms=RTT_MS,
        rate_mbit=RATE_MBIT,
        queue_bytes=QUEUE_BYTES,
        congestion_control="reno",  # always allowed: the host's list is left alone
    )
    made = Link(profile, delayline=binary)
    try:
        made.__enter__()
    except RuntimeError as exc:  # e.g. namespaces refused inside a container
        pytest.skip(f"no emulated links here: {exc}")
    try:
        yield made
    finally:
        made.close()


def test_small_datagrams_take_the_configured_round_trip(link: Link) -> None:
    trips = probe.rtt(link, count=15)
    assert len(trips) == 15  # no loss configured, none lost
    # never faster than the link (the delay is a floor), and within 3 ms of it at the median:
    # the rest is Python, two context switches and a loaded box's scheduler
    assert min(trips) >= RTT_MS - 0.05, trips
    assert statistics.median(trips) <= RTT_MS + 3.0, trips


def test_a_flood_arrives_at_the_configured_rate(link: Link) -> None:
    received = probe.rate(link, RATE_MBIT * 2, seconds=1.0)
    assert RATE_MBIT * 0.95 <= received <= RATE_MBIT * 1.05, received
