"""A model's memory is free for reuse only once no stream may still read it."""

from __future__ import annotations

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import specs_of
from fedsilo.common.wire import SERVER_CHUNKS, ModelFrames
from fedsilo.server.session import OutgoingModel
from fedsilo.server.uploads import UploadStore


def model_frames() -> ModelFrames:
    return ModelFrames(
        [torch.randn(100)],
        chunk_size=64,
        framer=SERVER_CHUNKS,
        trailer_of=lambda checksum: pb.ServerMessage(
            trailer=pb.TensorStreamTrailer(checksum=checksum)
        ),
    )


def test_frames_are_busy_from_a_queued_stream_until_it_is_sent():
    frames = model_frames()
    assert frames.idle
    first, second = OutgoingModel(b"a", frames), OutgoingModel(b"b", frames)
    assert not frames.idle
    assert len(list(first)) == 1 + 7 + 1  # opening, ceil(400 / 64) chunks, trailer
    assert not frames.idle  # the second is still queued
    second.abandon()
    assert frames.idle


def test_a_stream_cut_off_midway_releases_the_frames():
    frames = model_frames()
    stream = iter(OutgoingModel(b"a", frames))
    next(stream)
    next(stream)
    assert not frames.idle
    stream.close()  # what grpc does to the generator of a cancelled stream
    assert frames.idle


def test_abandoning_a_stream_that_is_being_sent_changes_nothing():
    frames = model_frames()
    outgoing = OutgoingModel(b"a", frames)
    stream = iter(outgoing)
    next(stream)
    outgoing.abandon()
    assert not frames.idle
    list(stream)
    assert frames.idle


def test_a_recycled_model_becomes_the_next_upload_buffer_unless_still_in_use(tmp_path):
    store = UploadStore(tmp_path / "spill", chunk_size=64)
    old, new = {"w": torch.randn(10)}, {"w": torch.randn(10)}
    assert not store.recycle(old, in_use={"w": old["w"]})  # shares memory with the new model
    assert store.recycle(old, in_use=new)
    assert not store.recycle({"w": torch.randn(10)}, in_use=new)  # one spare at most
    decoder = store.decoder(specs_of(new), in_turn=True, label="x")
    assert decoder.tensors["w"].data_ptr() == old["w"].data_ptr()
