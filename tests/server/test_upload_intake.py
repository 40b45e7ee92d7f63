"""Where uploads go (streamed, spilled, in line) and what the intake refuses at the boundary,
through the server's real job and sessions driven in-process."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server import spill, uploads
from fedsilo.server.registry import Stage
from fedsilo.server.strategies import fedavg
from tests.integration.conftest import assert_strict_json
from tests.server.inprocess import JobRunner, ReceivedModel, ScriptedClient

CHUNK = 1024  # the synthetic model is 2,440 bytes: every stream has three chunks


def trained(model: ReceivedModel, shift: float) -> dict[str, torch.Tensor]:
    return {name: t + shift for name, t in model.tensors.items()}


def chunked(shift: float, examples: int | None = None, metrics: Any = None) -> Any:
    def answer(client: ScriptedClient, model: ReceivedModel) -> None:
        if not model.opening.HasField("sync_model"):
            client.send(
                pb.ClientMessage(
                    eval_result=pb.EvalResult(
                        round=model.round,
                        evaluation=pb.Evaluation(examples=10, loss=0.5, accuracy=0.5),
                    )
                )
            )
            return
        client.send_update(
            model.round, trained(model, shift), examples, chunk_size=CHUNK, metrics=metrics
        )

    return answer


@pytest.fixture
def spill_files_made(monkeypatch) -> list[Path]:
    made: list[Path] = []
    real = spill.SpillSink.__init__

    def recording(self, path, specs, on_remove=lambda: None) -> None:
        made.append(path)
        real(self, path, specs, on_remove)

    monkeypatch.setattr(spill.SpillSink, "__init__", recording)
    return made


def run_job(tmp_path: Path, clients: dict[str, Any], **settings: Any) -> tuple[JobRunner, Any]:
    settings.setdefault("rounds", 2)
    settings.setdefault("min_clients", 1)
    settings.setdefault("start_clients", len(clients))
    settings.setdefault("join_timeout", 10)
    settings.setdefault("round_timeout", 20)
    runner = JobRunner(tmp_path, chunk_size=CHUNK, **settings)
    scripted = [runner.client(name, answer) for name, answer in clients.items()]
    for client in scripted:
        client.join()
    runner.start()
    return runner, runner.finish()


def test_no_spill_file_is_written_for_an_upload_in_turn(tmp_path: Path, spill_files_made) -> None:
    # One client at a time: each upload begins when its turn has come.
    _, outcome = run_job(tmp_path, {"a": chunked(0.5)}, rounds=3)
    assert outcome.finished, outcome.reason
    assert spill_files_made == []


def test_an_upload_before_its_turn_waits_in_line_when_memory_and_disk_are_full(
    tmp_path: Path, monkeypatch, spill_files_made
) -> None:
    monkeypatch.setattr(uploads, "WAITING_IN_MEMORY_BYTES", 0)
    runner = JobRunner(
        tmp_path, chunk_size=CHUNK, rounds=1, min_clients=2, join_timeout=10, spill_budget_mib=0
    )
    registry = runner.job.state.registry

    def a_uploads_once_b_waits(client: ScriptedClient, model: ReceivedModel) -> None:
        if model.opening.HasField("sync_model"):
            # b (id 1) uploads first, out of turn, and must wait in line: a (id 0) goes next.
            wait_for(lambda: (m := registry.get(1)) is not None and m.stage is Stage.QUEUED)
        chunked(1.0)(client, model)

    def b_uploads_at_once(client: ScriptedClient, model: ReceivedModel) -> None:
        if model.opening.HasField("sync_model"):
            threading.Thread(target=chunked(3.0), args=(client, model), daemon=True).start()
            return
        chunked(3.0)(client, model)

    a = runner.client("a", a_uploads_once_b_waits)
    b = runner.client("b", b_uploads_at_once)
    a.join()
    b.join()
    runner.start()
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    assert spill_files_made == []
    start = a.received[0].tensors
    want = fedavg.aggregate(
        [{k: v + 1.0 for k, v in start.items()}, {k: v + 3.0 for k, v in start.items()}],
        [10.0, 10.0],
    )
    for name, tensor in want.items():
        assert torch.equal(runner.job.global_state[name], tensor), name


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    """Poll ``predicate`` every 10 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_update_claiming_more_examples_than_its_ready_is_refused(tmp_path: Path) -> None:
    _, outcome = run_job(
        tmp_path,
        {
            "honest-1": chunked(1.0),
            "liar": chunked(100.0, examples=10**6),
            "honest-2": chunked(2.0),
        },
        rounds=1,
    )
    assert outcome.finished, outcome.reason
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    (dropped,) = rows[1]["dropped"]
    assert dropped["client_id"] == 1 and "Ready said 10" in dropped["reason"]
    assert rows[1]["participants"] == [0, 2]


def test_the_global_model_is_the_honest_fedavg_when_a_client_claims_2_to_the_62(
    tmp_path: Path,
) -> None:
    received: list[ReceivedModel] = []

    def honest(shift: float) -> Any:
        def answer(client: ScriptedClient, model: ReceivedModel) -> None:
            received.append(model)
            chunked(shift)(client, model)

        return answer

    runner, outcome = run_job(
        tmp_path,
        {"a": honest(1.0), "liar": chunked(1000.0, examples=2**62), "c": honest(2.0)},
        rounds=1,
    )
    assert outcome.finished, outcome.reason
    start = received[0].tensors
    want = fedavg.aggregate(
        [{k: v + 1.0 for k, v in start.items()}, {k: v + 2.0 for k, v in start.items()}],
        [10.0, 10.0],
    )
    for name, tensor in want.items():
        assert torch.equal(runner.job.global_state[name], tensor), name


@pytest.mark.parametrize(
    "metrics",
    [
        pb.LocalMetrics(train_loss=math.nan, train_seconds=1),
        pb.LocalMetrics(train_loss=1e308, train_seconds=1),
        pb.LocalMetrics(
            train_loss=0.1,
            train_seconds=1,
            evaluation=pb.Evaluation(examples=5, loss=0.1, accuracy=math.inf),
        ),
    ],
    ids=["nan-loss", "huge-loss", "inf-accuracy"],
)
def test_a_bad_metric_refuses_that_update_and_never_reaches_a_file(
    tmp_path: Path, metrics: pb.LocalMetrics
) -> None:
    _, outcome = run_job(
        tmp_path, {"honest": chunked(1.0), "bad": chunked(1.0, metrics=metrics)}, rounds=2
    )
    assert outcome.finished, outcome.reason
    rows = assert_strict_json(tmp_path / "run" / "metrics.jsonl")
    assert all(row.get("participants", [0]) == [0] for row in rows[1:])
    assert (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("value", [3e38, -3e38])
def test_finite_values_too_large_for_the_sum_are_refused(tmp_path: Path, value: float) -> None:
    def huge(client: ScriptedClient, model: ReceivedModel) -> None:
        if model.opening.HasField("sync_model"):
            client.send_update(
                model.round,
                {k: torch.full_like(t, value) for k, t in model.tensors.items()},
                chunk_size=CHUNK,
            )
        else:
            chunked(0.0)(client, model)

    runner, outcome = run_job(tmp_path, {"honest": chunked(1.0), "huge": huge}, rounds=2)
    assert outcome.finished, outcome.reason
    assert all(bool(torch.isfinite(t).all()) for t in runner.job.global_state.values())
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("in magnitude" in d["reason"] for row in rows[1:] for d in row.get("dropped", []))


@pytest.mark.parametrize(
    "evaluation",
    [
        pb.Evaluation(examples=10, loss=math.nan, accuracy=0.5),
        pb.Evaluation(examples=10, loss=0.5, accuracy=1e308),
        pb.Evaluation(examples=2**62, loss=0.5, accuracy=0.5),
    ],
    ids=["nan-loss", "huge-accuracy", "2-to-the-62-examples"],
)
def test_a_bad_final_evaluation_is_left_out_and_the_job_still_finishes(
    tmp_path: Path, evaluation: pb.Evaluation
) -> None:
    def bad_final(client: ScriptedClient, model: ReceivedModel) -> None:
        if model.opening.HasField("sync_model"):
            chunked(1.0)(client, model)
        else:
            client.send(
                pb.ClientMessage(
                    eval_result=pb.EvalResult(round=model.round, evaluation=evaluation)
                )
            )

    _, outcome = run_job(tmp_path, {"honest": chunked(1.0), "bad": bad_final}, rounds=1)
    assert outcome.finished, outcome.reason
    rows = assert_strict_json(tmp_path / "run" / "metrics.jsonl")
    final = rows[-1]
    assert [c["client_id"] for c in final["eval_clients"]] == [0]  # the honest one's alone
    assert final["eval_loss"] == 0.5 and final["eval_examples"] == 10
    assert (tmp_path / "run" / "model.pt").exists()


def test_a_new_global_model_that_is_not_finite_aborts_the_job_and_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    # The magnitude bound should make this impossible; the check behind it is what is tested:
    # a strategy step gone wrong must never become the model that goes out to the members.
    runner = JobRunner(tmp_path, rounds=3, min_clients=1, join_timeout=10, chunk_size=CHUNK)
    model = runner.job.coordinator.model
    real_step = model.strategy.next_global
    good: list[dict[str, torch.Tensor]] = []

    def step(state: Any, mean: Any) -> Any:
        if good:  # round 2 goes wrong
            return {name: torch.full_like(t, math.inf) for name, t in state.items()}
        new = real_step(state, mean)
        good.append({name: t.clone() for name, t in new.items()})  # the job may reuse ``new``
        return new

    model.strategy.next_global = step  # type: ignore[method-assign]
    runner.client("a", chunked(1.0)).join()
    runner.start()
    outcome = runner.finish()
    assert not outcome.finished
    assert "round 2: the new global model" in outcome.reason, outcome.reason
    assert "NaN or infinite" in outcome.reason
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    for name, tensor in good[0].items():
        assert torch.equal(saved[name], tensor), name
    assert_strict_json(tmp_path / "run" / "metrics.jsonl")
