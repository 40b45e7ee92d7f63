"""A producer thread runs ahead of its consumer: same items, errors in order, a bounded lead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fedsilo.common.secagg.ahead import run_ahead


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ahead-test")]


def test_items_come_in_order_and_the_thread_ends() -> None:
    assert list(run_ahead(iter(range(100)), 3, name="ahead-test")) == list(range(100))
    assert not _producer_threads()


def test_an_error_comes_after_the_items_made_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("the update has more than 4 values")

    got = []
    with pytest.raises(ValueError, match="more than 4 values"):
        for item in run_ahead(items(), 2, name="ahead-test"):
            got.append(item)
    assert got == [1, 2]
    assert not _producer_threads()


def test_the_producer_stays_at_most_depth_items_ahead() -> None:
    depth = 2
    asked: list[int] = []
    in_hand = threading.Event()  # the producer holds the item that does not fit the queue
    beyond = threading.Event()  # it asked for one more: the bound is broken

    def items() -> Iterator[int]:
        for index in range(50):
            asked.append(index)
            if index == depth + 1:
                in_hand.set()
            if index == depth + 2:
                beyond.set()
            yield index

    ahead = run_ahead(items(), depth, name="ahead-test")
    assert next(ahead) == 0
    # taken 0; queued 1..depth; in hand depth + 1, blocked: nothing more is asked for
    assert in_hand.wait(timeout=10)
    assert not beyond.wait(timeout=0.3)
    assert next(ahead) == 1
    assert beyond.wait(timeout=10)  # one taken, one more made
    ahead.close()


def test_closing_the_consumer_stops_and_closes_the_producer() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            closed.set()

    ahead = run_ahead(items(), 2, name="ahead-test")
    assert [next(ahead) for _ in range(5)] == [0, 1, 2, 3, 4]
    ahead.close()  # joins the producer
    assert closed.is_set()
    assert not _producer_threads()


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        next(run_ahead(iter([1]), 0))
