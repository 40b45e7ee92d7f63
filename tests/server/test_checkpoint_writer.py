"""Checkpoints are written in the background, one at a time; a failed write is not lost."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.server import checkpoint as checkpoint_module
from fedsilo.server.checkpoint import Checkpoint, CheckpointWriter, load_checkpoint

IDENTITY = {"job_id": 1}


def checkpoint(round_number: int) -> Checkpoint:
    return Checkpoint(
        round=round_number,
        global_state={"w": torch.full((4,), float(round_number))},
        strategy_state={},
        pending_row={"round": round_number},
        identity=IDENTITY,
    )


def test_a_checkpoint_offered_while_one_is_written_is_skipped(tmp_path: Path, monkeypatch):
    release = threading.Event()
    real_save = checkpoint_module.save_checkpoint

    def slow_save(path: Path, value: Checkpoint) -> None:
        assert release.wait(timeout=30)
        real_save(path, value)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_save)
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", structlog.get_logger())
    assert writer.offer(checkpoint(1))
    assert writer.busy
    assert not writer.offer(checkpoint(2))  # the disk is busy: skipped, the round goes on
    release.set()
    writer.wait()
    assert writer.saved_round == 1 and not writer.busy
    assert not writer.offer(checkpoint(2))  # too soon after a write that took this long
    assert writer.offer(checkpoint(3), force=True)  # the job's last round is always written
    writer.wait()
    assert writer.saved_round == 3
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", IDENTITY)
    assert loaded.round == 3
    assert torch.equal(loaded.global_state["w"], torch.full((4,), 3.0))


def test_a_failed_write_is_raised_by_the_next_wait(tmp_path: Path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    writer = CheckpointWriter(blocked / "checkpoint.pt", structlog.get_logger())
    writer.offer(checkpoint(1))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # reported once


def test_checkpoints_are_spaced_by_ten_times_the_last_write(tmp_path: Path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: clock[0])
    real_save = checkpoint_module.save_checkpoint

    def save_taking_two_seconds(path: Path, value: Checkpoint) -> None:
        clock[0] += 2.0
        real_save(path, value)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_taking_two_seconds)
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", structlog.get_logger())
    assert writer.offer(checkpoint(1))
    writer.wait()
    clock[0] = 100.0 + 19.0
    assert not writer.offer(checkpoint(2))  # 19 s after a 2 s write began: under 10 x 2 s
    clock[0] = 100.0 + 20.5
    assert writer.offer(checkpoint(3))
    writer.wait()
    assert writer.saved_round == 3
