"""Broken transfers kept for a resume (server/resume.py, server/resume_download.py), through the
real job and sessions driven in-process: a client's stream ends after two of its update's three
chunks (or one of the model's), and a new session of the same name continues it, or does not."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    PROTOCOL_VERSION,
    RawChunk,
    parse_server_message,
    serialize,
    tolerant_deserializer,
)
from fedsilo.server import upload as upload_module
from fedsilo.server.outbox import OutgoingModel
from fedsilo.server.strategies import fedavg
from fedsilo.tasks import load_task
from tests.integration.conftest import read_metrics
from tests.server.inprocess import JobRunner, ReceivedModel, ScriptedClient
from tests.wire_helpers import encode_state, header_of_state

_parse_client = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)
CHUNK = 1024  # the synthetic model is 2,440 bytes: three chunks, the break after two
SHIFTS = {"a": 1.0, "b": 3.0}


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` every 10 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def evaluate(client: ScriptedClient, model: ReceivedModel) -> None:
    """Answer the final evaluation."""
    result = pb.EvalResult(
        round=model.round, evaluation=pb.Evaluation(examples=10, loss=0.5, accuracy=0.5)
    )
    client.send(pb.ClientMessage(eval_result=result))


class Breaking:
    """Answers its SyncModel with two chunks of its update, then its stream ends."""

    def __init__(self, shift: float, after: Callable[[], None] = lambda: None) -> None:
        self.shift = shift
        self.after = after  # waited for before uploading (to order the clients' uploads)
        self.stream: tuple[pb.SendModel, list[bytes], int] | None = None
        self.broke = threading.Event()

    def __call__(self, client: ScriptedClient, model: ReceivedModel) -> None:
        if not model.opening.HasField("sync_model"):
            evaluate(client, model)
            return
        threading.Thread(target=self._upload, args=(client, model), daemon=True).start()

    def _upload(self, client: ScriptedClient, model: ReceivedModel) -> None:
        self.after()
        tensors = {k: v + self.shift for k, v in model.tensors.items()}
        _, chunks, checksum = encode_state(tensors, CHUNK)
        send = pb.SendModel(
            round=model.round,
            train_examples=client.examples,
            metrics=pb.LocalMetrics(train_loss=0.1, train_seconds=0.01),
            update=header_of_state(tensors),
        )
        self.stream = (send, chunks, checksum)
        client.send(pb.ClientMessage(send_model=send))
        for chunk in chunks[:2]:
            client.send(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)))
        client.disconnect()
        self.broke.set()

    def resume(self, client: ScriptedClient, offset: int) -> None:
        """Send the rest of the stream from ``offset`` (a chunk boundary here)."""
        assert self.stream is not None
        send, chunks, checksum = self.stream
        resumed = pb.SendModel()
        resumed.CopyFrom(send)
        resumed.resume_offset = offset
        client.send(pb.ClientMessage(send_model=resumed))
        for chunk in chunks[offset // CHUNK :]:
            client.send(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)))
        client.send(pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))


def full_upload(shift: float, after: Callable[[], None] = lambda: None) -> Any:
    def answer(client: ScriptedClient, model: ReceivedModel) -> None:
        if model.opening.HasField("sync_model"):

            def send() -> None:
                after()
                tensors = {k: v + shift for k, v in model.tensors.items()}
                client.send_update(model.round, tensors, chunk_size=CHUNK)

            threading.Thread(target=send, daemon=True).start()
        else:
            evaluate(client, model)

    return answer


def next_message(client: ScriptedClient, kind: str) -> pb.ServerMessage:
    """The next message of ``kind`` the client receives (bounded wait)."""
    deadline = time.monotonic() + 20
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} message"
        try:
            message = client.messages.get(timeout=left)
        except queue.Empty:
            continue
        if message.WhichOneof("body") == kind:
            return message


def start(tmp_path: Path, answers: dict[str, Any], **settings: Any) -> JobRunner:
    """A one-round job of these clients (joined in this order: ids 0, 1, ...), started."""
    settings.setdefault("round_timeout", 30)
    runner = JobRunner(
        tmp_path,
        chunk_size=CHUNK,
        rounds=1,
        min_clients=1,
        start_clients=len(answers),
        join_timeout=10,
        **settings,
    )
    for name, answer in answers.items():
        runner.client(name, answer).join()
    runner.start()
    return runner


def round_row(tmp_path: Path) -> dict[str, Any]:
    (row,) = [r for r in read_metrics(tmp_path / "run") if r["round"] == 1]
    return row


def expected(start_state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    updates = [{k: v + SHIFTS[n] for k, v in start_state.items()} for n in names]
    return fedavg.aggregate(updates, [10.0] * len(names))


@pytest.mark.parametrize("breaker", ["a", "b"])
def test_a_broken_upload_goes_on_from_the_servers_offset_and_the_sum_is_bitwise_the_same(
    tmp_path: Path, breaker: str
) -> None:
    # "a" (id 0) breaks while its update is folded as it streams; "b" (id 1) while its update
    # waits for its turn (a uploads only once b has broken off).
    breaking = Breaking(SHIFTS[breaker])
    other = "b" if breaker == "a" else "a"
    after = breaking.broke.wait if breaker == "b" else (lambda: None)
    answers = {other: full_upload(SHIFTS[other], after), breaker: breaking}
    runner = start(tmp_path, dict(sorted(answers.items())))
    wait_for(breaking.broke.is_set)
    wait_for(lambda: runner.job.transfers.uploads.holds(0 if breaker == "a" else 1))

    again = runner.client(breaker)
    again.join(resume=pb.StreamPosition(round=1, offset=0))
    init = next_message(again, "init_config").init_config
    assert init.HasField("resume_upload")
    assert (init.resume_upload.round, init.resume_upload.offset) == (1, 2 * CHUNK)
    breaking.resume(again, init.resume_upload.offset)

    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    row = round_row(tmp_path)
    assert row["dropped"] == []
    assert sorted(row["participants"]) == [0, 1]
    for name, tensor in expected(initial(runner), ["a", "b"]).items():
        assert torch.equal(runner.job.global_state[name], tensor), name


def initial(runner: JobRunner) -> dict[str, torch.Tensor]:
    """The synthetic task's initial model (what round 1 trained)."""
    return dict(load_task("synthetic").build_model(runner.config.seed).state_dict())


def test_the_norm_bound_counts_the_bytes_before_and_after_the_break(tmp_path: Path) -> None:
    # 610 float32 values, each moved by 1.0: a norm of sqrt(610) = 24.7 over the whole update,
    # sqrt(512) = 22.6 before the break at byte 2,048 and sqrt(98) = 9.9 after it. A bound of
    # 23 refuses the update only if both parts count.
    breaking = Breaking(1.0)
    runner = start(tmp_path, {"a": breaking, "b": full_upload(0.5)}, update_norm_bound=23.0)
    wait_for(lambda: runner.job.transfers.uploads.holds(0))
    again = runner.client("a")
    again.join(resume=pb.StreamPosition(round=1, offset=0))
    breaking.resume(again, next_message(again, "init_config").init_config.resume_upload.offset)
    error = next_message(again, "error").error
    assert error.code == pb.BAD_TENSOR_STREAM
    assert "update L2 norm 24.7 exceeds the bound 23" in error.message
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    start_state = initial(runner)
    only_b = fedavg.aggregate([{k: v + 0.5 for k, v in start_state.items()}], [10.0])
    for name, tensor in only_b.items():
        assert torch.equal(runner.job.global_state[name], tensor), name


def test_a_resume_at_another_offset_is_refused_and_the_round_goes_on_without_it(
    tmp_path: Path,
) -> None:
    breaking = Breaking(SHIFTS["a"])
    runner = start(tmp_path, {"a": breaking, "b": full_upload(SHIFTS["b"])})
    wait_for(lambda: runner.job.transfers.uploads.holds(0))
    again = runner.client("a")
    again.join(resume=pb.StreamPosition(round=1, offset=0))
    assert next_message(again, "init_config").init_config.resume_upload.offset == 2 * CHUNK
    breaking.resume(again, CHUNK)  # one chunk early: it would add those bytes twice
    error = next_message(again, "error").error
    assert error.code == pb.BAD_TENSOR_STREAM
    assert "continues at byte 1024; the server holds 2048 bytes" in error.message
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    for name, tensor in expected(initial(runner), ["b"]).items():
        assert torch.equal(runner.job.global_state[name], tensor), name


def test_a_reconnect_that_does_not_name_the_upload_gives_it_up(tmp_path: Path) -> None:
    breaking = Breaking(SHIFTS["a"])
    runner = start(tmp_path, {"a": breaking, "b": full_upload(SHIFTS["b"])})
    wait_for(lambda: runner.job.transfers.uploads.holds(0))
    again = runner.client("a")
    again.join()  # a restarted client: it no longer has that update
    assert not next_message(again, "init_config").init_config.HasField("resume_upload")
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    (dropped,) = round_row(tmp_path)["dropped"]
    assert dropped["reason"] == "disconnected; reconnected without resuming the upload"
    assert not runner.job.transfers.uploads.holds(0)


@pytest.mark.parametrize(
    ("window", "reason"), [(0.3, "disconnected; not resumed within 0.3s"), (0.0, "disconnected")]
)
def test_a_broken_upload_not_resumed_in_time_drops_its_client_without_waiting_for_the_round(
    tmp_path: Path, window: float, reason: str
) -> None:
    breaking = Breaking(SHIFTS["a"])
    began = time.monotonic()
    runner = start(
        tmp_path,
        {"a": breaking, "b": full_upload(SHIFTS["b"])},
        round_timeout=60,
        transfer_resume_seconds=window,
    )
    outcome = runner.finish(timeout=30)
    assert outcome.finished, outcome.reason
    assert time.monotonic() - began < 30  # well before the round's deadline
    (dropped,) = round_row(tmp_path)["dropped"]
    assert dropped["reason"] == reason
    for name, tensor in expected(initial(runner), ["b"]).items():
        assert torch.equal(runner.job.global_state[name], tensor), name


@pytest.mark.parametrize("takes_acks", [True, False])
def test_the_server_acknowledges_an_uploads_bytes_as_they_arrive_to_a_client_that_takes_acks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, takes_acks: bool
) -> None:
    monkeypatch.setattr(upload_module, "ACK_BYTES", CHUNK)
    runner = JobRunner(tmp_path, chunk_size=CHUNK, rounds=1, min_clients=1, join_timeout=10)
    client = runner.client("a", full_upload(SHIFTS["a"]))
    client.join(acks=takes_acks)
    runner.start()
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    acks = [m.upload_ack for m in drain(client) if m.WhichOneof("body") == "upload_ack"]
    # 2,440 bytes in chunks of 1,024: an ack each time another 1,024 bytes are in (none for
    # a client whose Hello did not say it takes them: a third-party client of protocol 2).
    want = [(1, 1024), (1, 2048)] if takes_acks else []
    assert [(a.round, a.offset) for a in acks] == want


def drain(client: ScriptedClient) -> list[pb.ServerMessage]:
    """Every message the client has received and not yet taken."""
    out = []
    while True:
        try:
            out.append(client.messages.get_nowait())
        except queue.Empty:
            return out


# ------------------------------------------------------------------ downloads


def broken_download(runner: JobRunner, name: str) -> bytes:
    """A session of ``name`` that takes the round's SyncModel and one chunk, then breaks off."""
    session = runner.job.open_session(f"test:{name}-first", lambda: None, None)
    hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=name)
    session.handle(_parse_client(serialize(pb.ClientMessage(hello=hello))))
    ready = pb.Ready(train_examples=10)
    session.handle(_parse_client(serialize(pb.ClientMessage(ready=ready))))
    runner.start()
    while not isinstance(item := session.outbox.get(timeout=20), OutgoingModel):
        pass
    frames = iter(item)
    next(frames)  # the SyncModel
    chunk = parse_server_message(next(frames))
    assert isinstance(chunk, RawChunk)
    frames.close()  # the stream broke: nothing more is read
    session.disconnect()
    return bytes(chunk.data)


def test_a_broken_download_goes_on_from_the_clients_offset_and_the_round_keeps_it(
    tmp_path: Path,
) -> None:
    runner = JobRunner(
        tmp_path, chunk_size=CHUNK, rounds=1, min_clients=1, start_clients=2, join_timeout=10
    )
    runner.client("b", full_upload(SHIFTS["b"])).join()
    first = broken_download(runner, "a")
    assert len(first) == CHUNK
    wait_for(lambda: runner.job.transfers.downloads.holds(1))
    again = runner.client("a", full_upload(SHIFTS["a"]))
    again.kept = first
    again.join(download=pb.StreamPosition(round=1, offset=CHUNK))
    sync = next_message(again, "sync_model").sync_model
    assert (sync.round, sync.resume_offset) == (1, CHUNK)
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    row = round_row(tmp_path)
    assert row["dropped"] == []
    assert sorted(row["participants"]) == [0, 1]
    for name, tensor in expected(initial(runner), ["b", "a"]).items():  # ids 0, 1
        assert torch.equal(runner.job.global_state[name], tensor), name


def test_a_broken_download_not_named_again_is_given_up(tmp_path: Path) -> None:
    runner = JobRunner(
        tmp_path, chunk_size=CHUNK, rounds=1, min_clients=1, start_clients=2, join_timeout=10
    )
    runner.client("b", full_upload(SHIFTS["b"])).join()
    broken_download(runner, "a")
    wait_for(lambda: runner.job.transfers.downloads.holds(1))
    runner.client("a", full_upload(SHIFTS["a"])).join()  # it lost what it had
    outcome = runner.finish()
    assert outcome.finished, outcome.reason
    (dropped,) = round_row(tmp_path)["dropped"]
    assert dropped == {
        "client_id": 1,
        "reason": "disconnected; reconnected without resuming",
        "phase": "download",
        "after_seconds": dropped["after_seconds"],
    }
