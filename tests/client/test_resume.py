"""The client's side of resumed transfers (client/resume.py): it keeps its chunked update (or a
broken model download), names it in the next Hello and sends (or takes) exactly the rest, with
the checksum of the whole stream."""

from __future__ import annotations

import pytest
import torch
import xxhash

from fedsilo.common.errors import ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.tensor_stream import TensorStreamEncoder
from tests.client.helpers import TRAIN, Driven, init_message

CHUNK = 1024  # the synthetic model's 2,440 bytes: three chunks each way


def uploaded(driven: Driven) -> list[pb.ClientMessage]:
    """Bring the client through round 1; return the update's frames it sent."""
    driven.protocol.handle(init_message(CHUNK))
    driven.take()
    header, chunks, checksum = driven.model_stream(driven.own_state(), CHUNK)
    protocol = driven.protocol
    protocol.handle(pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=TRAIN, model=header)))
    for chunk in chunks:
        protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunk)))
    protocol.handle(pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))
    return driven.take()


def test_a_new_session_names_the_upload_and_sends_exactly_the_rest_from_the_servers_offset() -> (
    None
):
    driven = Driven()
    first = uploaded(driven)
    assert [m.WhichOneof("body") for m in first] == [
        "send_model",
        "chunk",
        "chunk",
        "chunk",
        "trailer",
    ]
    whole = b"".join(m.chunk.data for m in first[1:4])
    protocol = driven.protocol
    protocol.handle(pb.ServerMessage(upload_ack=pb.StreamPosition(round=1, offset=1024)))
    protocol.handle(pb.ServerMessage(upload_ack=pb.StreamPosition(round=9, offset=2048)))  # not it

    hello = protocol.start_session(driven.raw.append).hello  # the stream broke: a new one
    assert (hello.resume_upload.round, hello.resume_upload.offset) == (1, 1024)
    init = init_message(CHUNK)
    init.init_config.resume_upload.CopyFrom(pb.StreamPosition(round=1, offset=2048))
    protocol.handle(init)
    ready, send, *rest = driven.take()
    assert ready.HasField("ready")
    assert send.send_model.resume_offset == 2048
    expected = pb.SendModel()
    expected.CopyFrom(first[0].send_model)
    expected.resume_offset = 2048
    assert send.send_model == expected
    assert [m.WhichOneof("body") for m in rest] == ["chunk", "trailer"]
    assert rest[0].chunk.data == whole[2048:]
    assert rest[1].trailer.checksum == xxhash.xxh3_64_intdigest(whole) == first[4].trailer.checksum


def test_an_init_config_without_resume_means_the_upload_is_over_and_is_not_named_again() -> None:
    driven = Driven()
    uploaded(driven)
    protocol = driven.protocol
    assert protocol.start_session(driven.raw.append).hello.HasField("resume_upload")
    protocol.handle(init_message(CHUNK))
    assert [m.WhichOneof("body") for m in driven.take()] == ["ready"]
    assert not protocol.start_session(driven.raw.append).hello.HasField("resume_upload")


def test_the_next_model_ends_the_pending_upload() -> None:
    driven = Driven()
    uploaded(driven)
    header, _, _ = driven.model_stream(driven.own_state(), CHUNK)
    driven.protocol.handle(
        pb.ServerMessage(sync_model=pb.SyncModel(round=2, train=TRAIN, model=header))
    )
    assert not driven.protocol.start_session(driven.raw.append).hello.HasField("resume_upload")


def test_an_encoder_started_at_an_offset_yields_the_rest_and_checksums_everything() -> None:
    tensors = [torch.arange(300, dtype=torch.float32), torch.arange(7, dtype=torch.int8)]
    whole = b"".join(bytes(p) for parts in TensorStreamEncoder(tensors, 256) for p in parts)
    for start in (0, 1, 256, 1199, 1200, 1207):
        encoder = TensorStreamEncoder(tensors, 256, start=start)
        rest = [b"".join(bytes(p) for p in parts) for parts in encoder]
        assert b"".join(rest) == whole[start:]
        assert all(0 < len(chunk) <= 256 for chunk in rest)
        assert encoder.checksum == xxhash.xxh3_64_intdigest(whole)


def test_a_broken_download_is_named_in_the_next_hello_and_goes_on_where_it_stopped() -> None:
    driven = Driven()
    protocol = driven.protocol
    protocol.handle(init_message(CHUNK))
    driven.take()
    sent_state = {k: v + 0.25 for k, v in driven.own_state().items()}
    header, chunks, checksum = driven.model_stream(sent_state, CHUNK)
    sync = pb.SyncModel(round=1, train=TRAIN, model=header)
    protocol.handle(pb.ServerMessage(sync_model=sync))
    protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunks[0])))

    hello = protocol.start_session(driven.raw.append).hello  # the stream broke mid-download
    assert (hello.resume_download.round, hello.resume_download.offset) == (1, CHUNK)
    protocol.handle(init_message(CHUNK))
    assert [m.WhichOneof("body") for m in driven.take()] == ["ready"]
    resumed = pb.SyncModel()
    resumed.CopyFrom(sync)
    resumed.resume_offset = CHUNK
    protocol.handle(pb.ServerMessage(sync_model=resumed))
    for chunk in chunks[1:]:
        protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunk)))
    protocol.handle(pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))
    # The whole model arrived (checksum and finite checks passed) and was trained on.
    update = driven.take()[0]
    assert update.send_model.round == 1 and update.send_model.train_examples > 0


def test_a_continued_download_at_another_offset_is_refused() -> None:
    driven = Driven()
    protocol = driven.protocol
    protocol.handle(init_message(CHUNK))
    header, chunks, _ = driven.model_stream(driven.own_state(), CHUNK)
    sync = pb.SyncModel(round=1, train=TRAIN, model=header)
    protocol.handle(pb.ServerMessage(sync_model=sync))
    protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunks[0])))
    protocol.start_session(driven.raw.append)
    protocol.handle(init_message(CHUNK))
    driven.take()
    sync.resume_offset = 2 * CHUNK  # this client has 1,024 bytes, not 2,048
    with pytest.raises(ProtocolError, match="goes on at byte 2048; this client has 1024 bytes"):
        protocol.handle(pb.ServerMessage(sync_model=sync))
    (error,) = driven.take()
    assert error.error.code == pb.BAD_TENSOR_STREAM
