"""The benchmark task: a model of the asked size, seeded random weights, training that touches
nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.bench_task import MIB, NoopTask
from fedsilo.tasks import Evaluation, Task, TrainConfig, TrainResult, load_task

REPO = Path(__file__).resolve().parents[2]
DIGEST = (
    "import hashlib, sys; from bench.bench_task import NoopTask; "
    "p = NoopTask(model_mib=1).build_model(seed=int(sys.argv[1])).state_dict()['payload']; "
    "print(hashlib.sha256(p.numpy().tobytes()).hexdigest())"
)


def payload_digest_in_a_new_process(seed: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", DIGEST, str(seed)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_build_model_holds_a_payload_of_model_mib() -> None:
    model = NoopTask(model_mib=2.5).build_model(seed=0)
    payload = model.state_dict()["payload"]
    assert payload.dtype == torch.float32
    assert payload.numel() * payload.element_size() == int(2.5 * MIB)


def test_the_payload_is_random_not_zeros() -> None:
    payload = NoopTask(model_mib=1).build_model(seed=0).state_dict()["payload"]
    assert torch.count_nonzero(payload) == payload.numel()
    assert payload.min() >= -1.0 and payload.max() < 1.0
    # uniform in [-1, 1): mean near 0, variance near 1/3 (262,144 draws: within 0.01)
    assert abs(payload.mean().item()) < 0.01
    assert abs(payload.var().item() - 1 / 3) < 0.01
    # every page differs: no 4 KiB page of the buffer repeats the first one
    pages = payload.view(-1, 1024)
    assert not torch.any(torch.all(pages[1:] == pages[0], dim=1))


def test_two_processes_with_the_same_seed_hold_the_same_bytes() -> None:
    here = NoopTask(model_mib=1).build_model(seed=7).state_dict()["payload"]
    assert payload_digest_in_a_new_process(7) == hashlib.sha256(here.numpy().tobytes()).hexdigest()


def test_another_seed_gives_other_bytes() -> None:
    task = NoopTask(model_mib=1)
    seven, eight = (task.build_model(seed=s).state_dict()["payload"] for s in (7, 8))
    assert not torch.equal(seven, eight)


def test_zeros_are_only_there_when_asked_for() -> None:
    payload = NoopTask(model_mib=1, payload="zeros").build_model(seed=0).state_dict()["payload"]
    assert torch.count_nonzero(payload) == 0
    with pytest.raises(ValueError, match="payload"):
        NoopTask(model_mib=1, payload="ones")


def test_train_and_evaluate_leave_the_model_alone() -> None:
    task = NoopTask(model_mib=0.01)
    model = task.build_model(seed=0)
    before = {name: (t.data_ptr(), t._version, t.clone()) for name, t in model.state_dict().items()}
    data = task.load_data(partition=0, seed=0, data_dir=None)
    config = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1, seed=0)
    assert task.train(model, data, config) == TrainResult(examples=1, loss=0.0)
    assert task.evaluate(model, data) == Evaluation(examples=1, loss=0.0, accuracy=0.0)
    for name, tensor in model.state_dict().items():
        pointer, version, values = before[name]
        assert (tensor.data_ptr(), tensor._version) == (pointer, version), name
        assert torch.equal(tensor, values), name


def test_the_daemons_can_load_it_by_name() -> None:
    task = load_task("bench.bench_task:NoopTask", {"model_mib": 0.5, "payload": "random"})
    assert isinstance(task, Task)


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="model_mib"):
        NoopTask(model_mib=-1)
