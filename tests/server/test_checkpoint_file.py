"""The checkpoint file: raw bytes and a JSON header, bit-exact back, damage detected, a write
that is cancelled changes nothing, and the page cache is not flooded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.common.errors import ConfigError
from fedsilo.server import checkpoint_file
from fedsilo.server.checkpoint import Checkpoint, CheckpointWriter, load_checkpoint

IDENTITY = {"job_id": 3, "task": "synthetic"}


def sample(round_number: int = 4) -> Checkpoint:
    generator = torch.Generator().manual_seed(round_number)
    return Checkpoint(
        round=round_number,
        global_state={
            "w": torch.randn(33, 7, generator=generator),
            "h": torch.randn(5, generator=generator).to(torch.bfloat16),
            "steps": torch.tensor(17),
            "empty": torch.zeros(0),
            "mask": torch.tensor([True, False, True]),
        },
        strategy_state={"m": torch.randn(33, 7, generator=generator), "step": torch.tensor(2)},
        pending_row={"round": round_number, "train_loss": 0.25, "clients": [{"name": "a"}]},
        identity=IDENTITY,
    )


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_a_checkpoint_reads_back_bit_exact(tmp_path: Path) -> None:
    from fedsilo.server.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.ckpt"
    written = sample()
    save_checkpoint(path, written)
    loaded = load_checkpoint(path, IDENTITY)
    assert loaded.round == written.round and loaded.pending_row == written.pending_row
    for group in ("global_state", "strategy_state"):
        want, got = getattr(written, group), getattr(loaded, group)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            assert raw(got[name]) == raw(want[name]), name
    assert path.read_bytes()[:12] == checkpoint_file.MAGIC  # not a pickle, not torch.save


@pytest.mark.parametrize("where", ["header", "tensor", "footer", "truncated", "appended"])
def test_damage_anywhere_is_a_one_line_config_error(tmp_path: Path, where: str) -> None:
    from fedsilo.server.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.ckpt"
    save_checkpoint(path, sample())
    data = bytearray(path.read_bytes())
    if where == "header":
        data[40] ^= 0x01
    elif where == "tensor":
        data[len(data) // 2] ^= 0x10
    elif where == "footer":
        data[-1] ^= 0xFF
    elif where == "truncated":
        del data[-100:]
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, IDENTITY)
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_another_job_is_refused(tmp_path: Path) -> None:
    from fedsilo.server.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.ckpt"
    save_checkpoint(path, sample())
    with pytest.raises(ConfigError, match="belongs to another job"):
        load_checkpoint(path, {"job_id": 4, "task": "synthetic"})


def test_a_cancelled_write_leaves_the_old_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "checkpoint.ckpt"
    writer = CheckpointWriter(path, structlog.get_logger())
    assert writer.offer(sample(1))
    writer.wait()
    monkeypatch.setattr(checkpoint_file, "SLICE_BYTES", 64)  # many slices: time to cancel
    entered, go_on = threading.Event(), threading.Event()
    real_write = checkpoint_file.os.write

    def slow_write(fd: int, data: bytes) -> int:
        entered.set()
        assert go_on.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(checkpoint_file.os, "write", slow_write)
    big = sample(2)
    assert writer.offer(big, force=True)
    assert entered.wait(10)
    releaser = threading.Thread(target=writer.release)
    releaser.start()
    wait_until(big.cancel.is_set)
    go_on.set()
    releaser.join(10)
    assert not writer.busy
    assert load_checkpoint(path, IDENTITY).round == 1  # the old one stands
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.ckpt"]


def test_after_three_cancellations_in_a_row_release_waits_instead(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path / "checkpoint.ckpt", structlog.get_logger())
    writer._cancelled_in_a_row = CheckpointWriter.MAX_CANCELLED_IN_A_ROW
    started = sample(5)
    assert writer.offer(started, force=True)
    assert writer.release() is False  # waited for it
    assert not started.cancel.is_set()
    assert load_checkpoint(tmp_path / "checkpoint.ckpt", IDENTITY).round == 5


def test_written_pages_are_advised_out_of_the_cache(tmp_path: Path, monkeypatch) -> None:
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(checkpoint_file, "FLUSH_BYTES", 1024)
    real = checkpoint_file.os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == checkpoint_file.os.POSIX_FADV_DONTNEED
        advised.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(checkpoint_file.os, "posix_fadvise", record)
    from fedsilo.server.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.ckpt"
    save_checkpoint(path, sample())
    covered = sum(length for _, length in advised)
    assert covered == path.stat().st_size  # every byte written was advised away, in order
    assert [offset for offset, _ in advised] == sorted(offset for offset, _ in advised)


def wait_until(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_extra_state_of_a_job_survives_the_file(tmp_path: Path) -> None:
    from fedsilo.server.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.ckpt"
    written = sample()
    extra = {"dp": {"sampling_rate": 0.5, "delta": 1e-5, "noise_multipliers": [1.1], "rounds": [3]}}
    save_checkpoint(path, Checkpoint(**{**written.__dict__, "extra": extra}))
    assert load_checkpoint(path, IDENTITY).extra == extra
