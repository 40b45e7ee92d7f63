"""A hand-written raw client breaks the protocol; the server answers each break with the right
Error on that stream only, and a real fl-client finishes the job meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from fedsilo.common.proto import federation_pb2 as pb
from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for
from tests.integration.raw_session import JOB_ID, RawSession, hello, update_messages


@pytest.fixture
def channel_to_job(daemons: Daemons, tmp_path: Path) -> Iterator[tuple[grpc.Channel, int, Path]]:
    port = free_port()
    run_dir = tmp_path / "run"
    daemons.server(
        JOB_ID,
        port - JOB_ID,
        "--rounds",
        "2",
        "--min-clients",
        "1",
        "--round-timeout",
        "60",
        "--out",
        str(run_dir),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, port, run_dir
    finally:
        channel.close()


def test_streams_that_never_identify_themselves_get_an_error_and_are_closed(
    channel_to_job: tuple[grpc.Channel, int, Path],
) -> None:
    channel, _, _ = channel_to_job
    garbage = RawSession(channel)
    garbage.send(b"\xff\xff\xff\xff not protobuf")
    garbage.expect_error(pb.MALFORMED_MESSAGE)
    garbage.expect_closed()

    early = RawSession(channel)
    early.send(pb.ClientMessage(ready=pb.Ready(train_examples=5)))
    early.expect_error(pb.UNKNOWN_CLIENT)
    early.expect_closed()

    wrong_job = RawSession(channel)
    wrong_job.send(hello("someone", job_id=JOB_ID + 1))
    assert f"job {JOB_ID + 1}" in wrong_job.expect_error(pb.WRONG_JOB)
    wrong_job.expect_closed()

    old = RawSession(channel)
    old.send(pb.ClientMessage(hello=pb.Hello(protocol_version=99, client_name="x")))
    old.expect_error(pb.PROTOCOL_VERSION_MISMATCH)
    old.expect_closed()


def test_illegal_messages_get_errors_and_the_job_goes_on(
    channel_to_job: tuple[grpc.Channel, int, Path], daemons: Daemons
) -> None:
    channel, port, run_dir = channel_to_job
    server = daemons.started[0]
    raw = RawSession(channel)
    raw.send(hello("raw"))
    init = raw.recv()
    assert init.WhichOneof("body") == "init_config" and init.init_config.client_id == 0

    raw.send(hello("raw"))
    raw.expect_error(pb.DUPLICATE_HELLO)

    # An update before READY is refused once; the chunks and trailer after it are swallowed.
    raw.send(*update_messages(1, {"w": torch.zeros(3)}))
    raw.expect_error(pb.ILLEGAL_MESSAGE)
    raw.send(pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=1)))
    raw.expect_error(pb.ILLEGAL_MESSAGE)  # a stray trailer outside any stream

    raw.send(pb.ClientMessage(ready=pb.Ready(train_examples=10, test_examples=0)))
    head, state = raw.receive_model()  # round 1 starts with the raw client alone (min 1)
    assert head.sync_model.round == 1

    # Let a real client get ready so that it takes part from round 2 on.
    real = daemons.client(port, "real-org")
    wait_for(lambda: server.has_event("client_ready", client="real-org"), 60, "real client")

    for message in update_messages(2, state)[:1]:
        raw.send(message)
    raw.expect_error(pb.WRONG_ROUND)
    raw.send(*update_messages(2, state)[1:])  # swallowed with the refused SendModel
    raw.send(*update_messages(1, state))  # the right round: accepted, nothing comes back

    head, state = raw.receive_model()
    assert head.sync_model.round == 2
    # A second update for round 1 (a duplicate, now late): ignored quietly, counted once. Sent
    # once round 2 has begun, so that it cannot keep this client out of round 2's selection.
    raw.send(*update_messages(1, state))
    bad_shape = {name: tensor[..., :1].contiguous() for name, tensor in state.items()}
    raw.send(*update_messages(2, bad_shape))
    assert "does not match" in raw.expect_error(pb.BAD_TENSOR_STREAM)
    raw.close()

    assert real.wait(timeout=60) == 0, real.tail()
    assert server.wait(timeout=60) == 0, server.tail()
    rows = read_metrics(run_dir)
    assert rows[1]["participants"] == [0]
    assert rows[1]["train_examples"] == 10  # the duplicate was not counted
    assert server.has_event("update_ignored", client="raw")
    assert rows[2]["participants"] == [1]
    assert rows[2]["dropped"][0]["client_id"] == 0
    assert "refused" in rows[2]["dropped"][0]["reason"]


def test_a_new_connection_with_the_same_name_takes_over_as_the_same_client(
    channel_to_job: tuple[grpc.Channel, int, Path],
) -> None:
    channel, _, _ = channel_to_job
    first = RawSession(channel)
    first.send(hello("org-x"))
    first_id = first.recv().init_config.client_id
    other = RawSession(channel)
    other.send(hello("org-y"))
    assert other.recv().init_config.client_id != first_id

    again = RawSession(channel)  # e.g. org-x reconnecting before the old stream timed out
    again.send(hello("org-x"))
    assert again.recv().init_config.client_id == first_id
    assert "took over" in first.expect_error(pb.NAME_IN_USE)
    first.expect_closed()


def test_an_update_over_the_norm_bound_is_refused_and_logged(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB_ID,
        port - JOB_ID,
        "--min-clients",
        "1",
        "--rounds",
        "1",
        "--update-norm-bound",
        "0.5",
        "--out",
        str(tmp_path / "run"),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        raw = RawSession(channel)
        raw.send(hello("pusher"), pb.ClientMessage(ready=pb.Ready(train_examples=10)))
        assert raw.recv().HasField("init_config")
        _, state = raw.receive_model()
        pushed = {name: tensor + 1.0 for name, tensor in state.items()}  # norm far above 0.5
        raw.send(*update_messages(1, pushed))
        assert "exceeds the bound 0.5" in raw.expect_error(pb.BAD_TENSOR_STREAM)
        wait_for(lambda: server.has_event("update_refused", client="pusher"), 30, "the log")
        raw.close()
    finally:
        channel.close()
