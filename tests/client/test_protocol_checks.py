"""What the client checks in the server's messages, and what its audit log records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import xxhash

from fedsilo.client.audit import AuditLog
from fedsilo.common.errors import ConfigError, PolicyError, ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.task_identity import TaskIdentity
from tests.client.helpers import OPTIONS, TASK, TRAIN, Driven, init_message


def sync(round_number: int, state: dict[str, torch.Tensor], driven: Driven) -> pb.ServerMessage:
    header, chunks, checksum = driven.model_stream(state, 1 << 20)
    (data,) = chunks
    header.inline.data, header.inline.checksum = data, checksum
    return pb.ServerMessage(sync_model=pb.SyncModel(round=round_number, train=TRAIN, model=header))


def refused(driven: Driven, message: pb.ServerMessage, error: type[Exception]) -> pb.Error:
    """Handle ``message``; it must raise ``error`` after sending exactly one Error."""
    with pytest.raises(error):
        driven.protocol.handle(message)
    (sent,) = driven.take()
    assert sent.HasField("error")
    return sent.error


def joined(audit: AuditLog | None = None) -> Driven:
    driven = Driven(audit)
    driven.protocol.handle(init_message())
    driven.take()
    return driven


def test_a_round_outside_the_job_or_out_of_order_is_wrong_round() -> None:
    driven = joined()
    error = refused(driven, sync(3, driven.own_state(), driven), ProtocolError)
    assert error.code == pb.WRONG_ROUND and "expected one in 1..2" in error.message
    driven = joined()
    driven.protocol.handle(sync(2, driven.own_state(), driven))
    driven.take()
    error = refused(driven, sync(1, driven.own_state(), driven), ProtocolError)
    assert error.code == pb.WRONG_ROUND  # rounds only go forward within a session


def test_a_chunk_larger_than_the_jobs_chunk_size_is_refused() -> None:
    driven = Driven()
    driven.protocol.handle(init_message(chunk_size=1024))
    driven.take()
    header, _, _ = driven.model_stream(driven.own_state(), 1024)
    driven.protocol.handle(
        pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=TRAIN, model=header))
    )
    oversized = pb.ServerMessage(chunk=pb.TensorChunk(data=b"\x00" * 2048))
    error = refused(driven, oversized, ProtocolError)
    assert error.code == pb.BAD_TENSOR_STREAM and "exceeds the chunk size 1024" in error.message


@pytest.mark.parametrize("chunk_size", [0, (64 << 20) + 1])
def test_a_chunk_size_outside_the_channel_cap_is_unsupported(chunk_size: int) -> None:
    error = refused(Driven(), init_message(chunk_size=chunk_size), ConfigError)
    assert error.code == pb.UNSUPPORTED_CONFIG and "this client's cap" in error.message


def test_bytes_that_do_not_parse_are_malformed() -> None:
    error = refused(Driven(), None, ProtocolError)  # type: ignore[arg-type]
    assert error.code == pb.MALFORMED_MESSAGE


def test_a_reconnect_to_the_same_job_with_another_task_is_a_policy_mismatch() -> None:
    driven = joined()
    driven.protocol.start_session(driven.raw.append)
    other = TaskIdentity.of("digits", {})
    message = init_message()
    message.init_config.job.task = other.name
    message.init_config.job.task_options_json = other.options_json
    message.init_config.job.task_hash = other.hash
    error = refused(driven, message, PolicyError)
    assert error.code == pb.POLICY_MISMATCH and "changed job 1's task mid-job" in error.message


def test_the_audit_records_the_join_what_came_in_and_what_went_out(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", "org-a")
    driven = joined(audit)
    received = driven.own_state()
    received["weight"] += 0.25  # a global model that differs from the client's own
    message = sync(1, received, driven)
    driven.protocol.handle(message)
    (upload,) = driven.take()
    assert driven.protocol.model is not None
    trained = driven.protocol.model.state_dict()
    rows = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [row["event"] for row in rows] == ["joined", "model_received", "update_sent"]
    join, got, sent = rows
    assert join["task"] == {
        "name": TASK,
        "options": OPTIONS,
        "hash": TaskIdentity.of(TASK, OPTIONS).hash,
        "policy": "builtin",
    }
    assert join["training"] == {
        "local_epochs": 1,
        "batch_size": 8,
        "learning_rate": 0.5,
        "proximal_mu": 0.0,
        "optimizer": "sgd",
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    }
    assert (join["job_id"], join["client_id"], join["rounds"]) == (1, 0, 2)
    assert got["round"] == 1 and got["purpose"] == "train"
    data = message.sync_model.model.inline.data
    assert got["bytes"] == len(data) and got["checksum"] == f"{xxhash.xxh3_64_intdigest(data):016x}"
    # By hand: the L2 distance between the trained weights and the model as received.
    norm = sum(float(((trained[k].double() - v.double()) ** 2).sum()) for k, v in received.items())
    norm = norm**0.5
    # The client subtracts in float32 and sums in float64 pieces: within float32's precision.
    assert sent["update_norm"] == pytest.approx(norm, rel=1e-6) and norm > 0
    assert sent["bytes"] == len(data) and sent["codec"] == "none"
    assert sent["train_examples"] == upload.send_model.train_examples
    assert sent["metrics"]["train_loss"] == upload.send_model.metrics.train_loss
