"""checkpoint_bench's split: which rounds a checkpoint write overlapped."""

from __future__ import annotations

from bench.checkpoint_bench import split_rounds


def test_rounds_are_split_by_whether_a_checkpoint_write_intersects_them() -> None:
    job = {
        # round 1 (left out), then rounds 2-5
        "round_windows": [(0.0, 1.0), (1.0, 2.0), (2.0, 3.5), (3.5, 4.0), (4.0, 5.0)],
        "checkpoint_windows": [(1.5, 3.0)],  # round 1's checkpoint, written across 2 and 3
    }
    overlapped, clear = split_rounds(job)
    assert overlapped == [1.0, 1.5]
    assert clear == [0.5, 1.0]
