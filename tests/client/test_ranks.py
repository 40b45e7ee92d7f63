"""The pieces of ``--nproc-per-node``: settings and their errors, the shared files, the store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
import torch
from torch.distributed import TCPStore  # type: ignore[attr-defined]
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from fedsilo.client import ranks
from fedsilo.client.cli import main
from fedsilo.client.rank_files import (
    ALIGN,
    RESULT_FILE,
    WEIGHTS_FILE,
    RankResult,
    SharedWeights,
    layout,
    read_round,
    write_json,
)
from fedsilo.client.rank_launch import describe_failures, loopback_store
from fedsilo.client.ranks import RankSettings
from fedsilo.common.errors import ConfigError, LocalTrainingError
from fedsilo.common.specs import specs_of
from fedsilo.tasks import TrainConfig, load_task


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI configures structlog for its own stderr: undo it for the tests after."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("cli_logging")
@pytest.mark.parametrize(
    ("args", "gpus", "phrase"),
    [
        (["--nproc-per-node", "0"], 0, "nproc_per_node"),
        (["--nproc-per-node", "2", "--device", "cuda"], 1, "2 ranks need 2 GPUs"),
        (["--nproc-per-node", "2", "--device", "cuda:0"], 2, "give --device cuda"),
    ],
)
def test_ranks_the_device_cannot_run_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    gpus: int,
    phrase: str,
) -> None:
    if gpus:  # a machine with this many GPUs, as far as the client can tell
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    argv = ["--insecure", "--server", "127.0.0.1:1", "--out", str(tmp_path / "run")]
    assert main([*argv, "--task", "synthetic", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert errors == [err[-1]] and err[-1].startswith("fl-client: error: "), err
    assert phrase in err[-1], err


def test_one_rank_trains_in_the_client_and_several_share_the_cpu_threads() -> None:
    cpu = torch.device("cpu")
    assert RankSettings.resolve(1, cpu, None) is None
    settings = RankSettings.resolve(2, cpu, None)
    assert settings is not None
    assert (settings.nproc, settings.device) == (2, "cpu")
    assert settings.threads == max(1, (os.cpu_count() or 1) // 2)
    given = RankSettings.resolve(3, cpu, 4)
    assert given is not None and given.threads == 4
    with pytest.raises(ConfigError, match="cpu or cuda, not meta"):
        RankSettings.resolve(2, torch.device("meta"), None)


def test_the_weights_file_is_aligned_shared_and_exact(tmp_path: Path) -> None:
    state = {
        "w": torch.randn(3, 5),
        "h": torch.randn(7, dtype=torch.float64),
        "b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "n": torch.tensor(12345678901, dtype=torch.int64),
        "m": torch.tensor([True, False, True]),
    }
    specs = specs_of(state)
    offsets, total = layout(specs)
    assert all(offset % ALIGN == 0 for offset in offsets)
    assert total == offsets[-1] + specs[-1].nbytes
    writer = SharedWeights.create(tmp_path / "weights.bin", specs)
    writer.store(state)
    reader = SharedWeights(tmp_path / "weights.bin", specs)  # as a rank maps it
    back = {name: torch.zeros_like(tensor) for name, tensor in state.items()}
    reader.load_into(back)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name
    reader.views["w"].fill_(7.0)  # rank 0 writes its model: the client sees it
    writer.load_into(back)
    assert torch.equal(back["w"], torch.full((3, 5), 7.0))
    with pytest.raises(FileExistsError):
        SharedWeights.create(tmp_path / "weights.bin", specs)


def test_each_rendezvous_store_gets_its_own_port_from_the_os_on_the_loopback() -> None:
    with loopback_store() as first, loopback_store() as second:
        assert first != second
        client = TCPStore("127.0.0.1", first, is_master=False, timeout=timedelta(seconds=10))
        client.set("key", "value")
        assert client.get("key") == b"value"
        with socket.socket() as probe, pytest.raises(OSError):  # taken while the store serves
            probe.bind(("127.0.0.1", second))
        del client


def test_the_rank_that_was_killed_is_named_before_peers_that_failed_after_it(
    tmp_path: Path,
) -> None:
    error_file = tmp_path / "error.json"
    # The error file torch's ErrorHandler writes, from a rank whose collective lost its peer.
    message = {"message": "RuntimeError: Connection closed by peer", "extraInfo": {"timestamp": 1}}
    error_file.write_text(json.dumps({"message": message}))
    none = str(tmp_path / "none.json")
    # The agent's order: the failed ranks of one poll by rank, then those it stopped (SIGTERM).
    failures = {
        0: ProcessFailure(0, 100, 1, str(error_file)),
        1: ProcessFailure(1, 101, -9, none),
        2: ProcessFailure(2, 102, -15, none),
    }
    assert describe_failures(failures, 3) == "rank 1 of 3 (pid 101) was killed by SIGKILL"
    stopped = {2: ProcessFailure(2, 102, -15, none), 0: ProcessFailure(0, 100, -15, none)}
    assert describe_failures(stopped, 3) == "rank 2 of 3 (pid 102) was killed by SIGTERM"
    killed_later = {1: failures[1], 0: ProcessFailure(0, 100, -9, none)}
    assert describe_failures(killed_later, 2).startswith("rank 1 of 2")
    alone = describe_failures({0: failures[0]}, 2)
    assert (
        alone == "rank 0 of 2 (pid 100) exited with code 1: RuntimeError: Connection closed by peer"
    )


def fake_joined() -> SimpleNamespace:
    """The parts of a Joined that RankLauncher reads."""
    task = load_task("synthetic")
    return SimpleNamespace(
        task=task,
        model=task.build_model(0),
        job=SimpleNamespace(job_id=4, seed=0),
        client_id=1,
        identity=SimpleNamespace(name="synthetic", options_json="{}"),
        partition=1,
    )


@pytest.mark.parametrize("rank_0_finished", [True, False])
def test_a_rank_that_fails_after_rank_0_wrote_its_result_costs_nothing(
    monkeypatch: pytest.MonkeyPatch, rank_0_finished: bool
) -> None:
    def ranks_that_fail(nproc: int, folder: Path, run_id: str, log: object) -> None:
        """As the ranks would: read the weights, rank 0 doubles them and reports; one fails."""
        weights = SharedWeights(folder / WEIGHTS_FILE, read_round(folder).specs())
        if rank_0_finished:
            for view in weights.views.values():
                view.mul_(2)
            write_json(folder / RESULT_FILE, RankResult(examples=50, loss=0.25, steps=4))
        raise LocalTrainingError(f"rank 1 of {nproc} (pid 7) was killed by SIGABRT")

    monkeypatch.setattr(ranks, "launch", ranks_that_fail)
    joined = fake_joined()
    before = {k: v.clone() for k, v in joined.model.state_dict().items()}
    launcher = ranks.RankLauncher(RankSettings(2, "cpu", 1), "silo", None, structlog.get_logger())
    config = TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.1, seed=3)
    if not rank_0_finished:
        with pytest.raises(LocalTrainingError, match="rank 1 of 2") as failed:
            launcher.train(joined, 3, config)  # type: ignore[arg-type]
        assert failed.value.round_number == 3
        return
    result = launcher.train(joined, 3, config)  # type: ignore[arg-type]
    assert (result.examples, result.loss, result.steps) == (50, 0.25, 4)
    for name, tensor in joined.model.state_dict().items():
        assert torch.equal(tensor, before[name] * 2), name


def test_round_folders_of_clients_that_no_longer_run_are_swept(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)  # a pid that ran and ended: a client killed mid-round
    stale = tmp_path / f"{ranks.FOLDER_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{ranks.FOLDER_PREFIX}{os.getpid()}-def"  # this process: a round running
    other = tmp_path / "fedsilo-other-1-x"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"\0" * 64)
    assert ranks.sweep_stale_folders(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
