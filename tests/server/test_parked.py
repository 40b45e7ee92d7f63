"""The parked-transfer table both kept uploads and kept downloads use (server/parked.py)."""

from __future__ import annotations

import time

import torch

from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.job_state import Round
from fedsilo.server.parked import ParkedTable

LIKE = {"w": torch.zeros(2)}


def a_round(number: int, expected: list[int], deadline: float = float("inf")) -> Round:
    return Round(number, OrderedFold(expected=expected, like=LIKE), {}, deadline=deadline)


def test_breaking_again_does_not_stretch_the_window() -> None:
    table: ParkedTable[str] = ParkedTable(window=30.0)
    current = a_round(1, [7])
    before = time.monotonic()
    first = table.park(7, "a", current, "disconnected")
    assert first is not None and before + 30.0 <= first.expires <= time.monotonic() + 30.0
    assert table.pop(7) is first
    again = table.park(7, "b", current, "stalled")
    assert again is not None and again.expires == first.expires
    assert table.get(7) is again and again.held == "b" and again.reason == "stalled"


def test_the_rounds_deadline_caps_the_window() -> None:
    table: ParkedTable[str] = ParkedTable(window=30.0)
    deadline = time.monotonic() + 2.0
    entry = table.park(3, "a", a_round(1, [3], deadline), "disconnected")
    assert entry is not None and entry.expires == deadline


def test_nothing_is_kept_without_a_window_a_round_or_a_place_in_it() -> None:
    assert ParkedTable[str](window=0.0).park(1, "a", a_round(1, [1]), "r") is None
    table: ParkedTable[str] = ParkedTable(window=5.0)
    assert table.park(1, "a", None, "r") is None
    assert table.park(2, "a", a_round(1, [1]), "r") is None  # not selected
    assert not table.holds(1) and not table.holds(2) and table.entries() == []


def test_a_sweep_takes_out_the_ended_rounds_and_the_lapsed_apart() -> None:
    table: ParkedTable[str] = ParkedTable(window=5.0)
    old, current = a_round(1, [1]), a_round(2, [3, 4])
    table.park(1, "old", old, "r")
    live = table.park(4, "live", current, "r")
    current.deadline = time.monotonic() - 1.0  # from now on it caps what is parked: past
    table.park(3, "late", current, "cut off")
    over, lapsed = table.sweep(current)
    assert [e.held for e in over] == ["old"]  # not the round in progress any more
    assert [e.held for e in lapsed] == ["late"]
    assert table.lapsed_reason(lapsed[0]) == "cut off; not resumed within 5s"
    assert table.entries() == [live]
