"""Checkpoints are written in the background, one at a time; a failed write is not lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.server.checkpoint import Checkpoint, CheckpointWriter, load_checkpoint

IDENTITY = {"job_id": 1}


def checkpoint(round_number: int) -> Checkpoint:
    return Checkpoint(
        round=round_number,
        global_state={"w": torch.full((4,), float(round_number))},
        strategy_state={},
        pending_row={"round": round_number},
        client_ids={"a": 0},
        identity=IDENTITY,
    )


def test_the_last_written_checkpoint_is_on_disk_after_wait(tmp_path: Path):
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", structlog.get_logger())
    for number in range(1, 4):
        writer.write(checkpoint(number))
    writer.wait()
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", IDENTITY)
    assert loaded.round == 3
    assert torch.equal(loaded.global_state["w"], torch.full((4,), 3.0))


def test_a_failed_write_is_raised_by_the_next_wait(tmp_path: Path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    writer = CheckpointWriter(blocked / "checkpoint.pt", structlog.get_logger())
    writer.write(checkpoint(1))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # reported once
