"""Hand-made chunk frames equal what protobuf writes; deserializing never raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of as codec_header_of
from fedsilo.common.specs import specs_from_header, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    SERVER_CHUNKS,
    SESSION_METHOD_PATH,
    ModelFrames,
    RawChunk,
    channel_options,
    inline_tensors,
    parse_server_message,
    serialize,
    tensor_stream_frames,
    tolerant_deserializer,
)
from tests.wire_helpers import encode_state as codec_encode_state

VARINT_BOUNDARY_SIZES = [0, 1, 127, 128, 16383, 16384, 1 << 20]
ENVELOPES = [
    pytest.param(SERVER_CHUNKS, pb.ServerMessage, id="server"),
    pytest.param(CLIENT_CHUNKS, pb.ClientMessage, id="client"),
]


def payload(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(("framer", "envelope"), ENVELOPES)
@pytest.mark.parametrize("size", VARINT_BOUNDARY_SIZES)
def test_framed_chunk_parses_to_a_chunk_carrying_the_data(framer, envelope, size):
    data = payload(size)
    message = envelope.FromString(framer.frame([data]))
    assert message.WhichOneof("body") == "chunk"
    assert message.chunk.data == data


@pytest.mark.parametrize(("framer", "envelope"), ENVELOPES)
@pytest.mark.parametrize(
    "size",
    VARINT_BOUNDARY_SIZES,
)
def test_framed_chunk_is_byte_identical_to_protobuf_serialization(framer, envelope, size):
    data = payload(size)
    expected = envelope(chunk=pb.TensorChunk(data=data)).SerializeToString()
    assert framer.frame([data]) == expected


@pytest.mark.parametrize(("framer", "envelope"), ENVELOPES)
@pytest.mark.parametrize("sizes", [[1, 0, 126], [127, 1], [16383, 1, 0], [5000, 5000, 6384]])
def test_framed_memoryview_parts_equal_their_concatenation(framer, envelope, sizes):
    pieces = [payload(n + i)[:n] for i, n in enumerate(sizes)]
    parts = [memoryview(bytearray(piece)) for piece in pieces]
    whole = b"".join(pieces)
    frame = framer.frame(parts)
    assert envelope.FromString(frame).chunk.data == whole
    assert frame == envelope(chunk=pb.TensorChunk(data=whole)).SerializeToString()


def test_frames_of_encoder_parts_carry_the_tensor_bytes():
    tensors = [torch.arange(50, dtype=torch.float32), torch.arange(9, dtype=torch.int16)]
    frames = [SERVER_CHUNKS.frame(parts) for parts in TensorStreamEncoder(tensors, 64)]
    data = b"".join(pb.ServerMessage.FromString(f).chunk.data for f in frames)
    assert data == b"".join(t.numpy().tobytes() for t in tensors)


# ------------------------------------------------------------------ deserializing


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff", id="truncated-tag"),
        pytest.param(b"\x0a\x05ab", id="length-past-end"),
        pytest.param(b"\x0a\x03\x1a\x01\xff", id="invalid-utf8-name"),
        pytest.param(b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", id="overlong-varint"),
        pytest.param(b"\x07", id="field-zero-bad-wire-type"),
    ],
)
def test_tolerant_deserializer_returns_none_for_garbage(garbage):
    inbound = tolerant_deserializer(pb.ClientMessage)(garbage)
    assert inbound.message is None
    assert inbound.nbytes == len(garbage)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_tolerant_deserializer_never_raises(raw):
    for message_type in (pb.ClientMessage, pb.ServerMessage):
        inbound = tolerant_deserializer(message_type)(raw)
        assert inbound.nbytes == len(raw)
        assert inbound.message is None or isinstance(inbound.message, message_type)


def test_tolerant_deserializer_parses_a_valid_message():
    sent = pb.ClientMessage(hello=pb.Hello(protocol_version=1, job_id=3, client_name="org-a"))
    raw = sent.SerializeToString()
    inbound = tolerant_deserializer(pb.ClientMessage)(raw)
    assert inbound.message == sent
    assert inbound.nbytes == len(raw)
    assert inbound.message.hello.HasField("job_id")


def test_serialize_passes_prebuilt_frames_through_untouched():
    frame = SERVER_CHUNKS.frame([b"abc"])
    assert serialize(frame) is frame
    message = pb.ServerMessage(heartbeat=pb.Heartbeat())
    assert serialize(message) == message.SerializeToString()


# ------------------------------------------------------------------ tensor streams


def test_tensor_stream_frames_yield_header_chunks_trailer_that_decode():
    state = {"w": torch.randn(40, 7), "b": torch.randn(7), "n": torch.tensor(3)}
    header = codec_header_of(specs_of(state))
    encoder = TensorStreamEncoder(list(state.values()), chunk_size=100)
    frames = list(
        tensor_stream_frames(
            pb.ServerMessage(sync_model=pb.SyncModel(round=2, model=header)),
            encoder,
            SERVER_CHUNKS,
            lambda checksum: pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)),
        )
    )
    messages = [pb.ServerMessage.FromString(f) for f in frames]
    kinds = [m.WhichOneof("body") for m in messages]
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert kinds == ["sync_model"] + ["chunk"] * -(-total // 100) + ["trailer"]

    first = messages[0].sync_model
    assert first.round == 2
    decoder = TensorStreamDecoder(specs_from_header(first.model, 1 << 20), max_chunk_size=100)
    for message in messages[1:-1]:
        decoder.feed(message.chunk.data)
    decoded = decoder.finish(messages[-1].trailer.checksum)
    for name, tensor in state.items():
        assert torch.equal(decoded[name], tensor)


def test_tensor_stream_frames_are_lazy():
    encoder = TensorStreamEncoder([torch.zeros(1000)], chunk_size=1000)
    built: list[int] = []

    def trailer(checksum: int) -> pb.ClientMessage:
        built.append(checksum)
        return pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))

    frames = tensor_stream_frames(pb.ClientMessage(), encoder, CLIENT_CHUNKS, trailer)
    next(frames)
    next(frames)
    assert built == []
    rest = list(frames)
    assert len(rest) == 4 and built == [encoder.checksum]


def test_session_method_path():
    assert SESSION_METHOD_PATH == "/fedsilo.v1.Federation/Session"


def test_channel_options_admit_a_full_chunk_frame():
    chunk_size = 1 << 20
    options = dict(channel_options(chunk_size))
    biggest = SERVER_CHUNKS.frame([bytes(chunk_size)])
    assert options["grpc.max_send_message_length"] >= len(biggest)
    assert options["grpc.max_receive_message_length"] >= len(biggest)


@pytest.mark.parametrize(("framer", "envelope"), ENVELOPES)
@pytest.mark.parametrize("size", VARINT_BOUNDARY_SIZES)
def test_parse_reads_a_frame_back_in_place(framer, envelope, size):
    data = payload(size)
    raw = framer.frame([data])
    chunk = framer.parse(raw)
    assert chunk is not None
    assert bytes(chunk.data) == data == envelope.FromString(raw).chunk.data
    assert framer.frame_size(size) == len(raw)
    if size:
        assert chunk.data.obj is raw  # a view of the received bytes, not a copy


@pytest.mark.parametrize(("framer", "envelope"), ENVELOPES)
def test_parse_leaves_other_messages_and_other_encodings_to_protobuf(framer, envelope):
    others = [
        envelope(trailer=pb.TensorStreamTrailer(checksum=7)).SerializeToString(),
        envelope(error=pb.Error(message="x")).SerializeToString(),
        # legal protobuf, but not the canonical form: the chunk field twice (the last wins)
        framer.frame([b"abc"]) + framer.frame([b"de"]),
        framer.frame([b"abc"])[:-1],  # truncated
        b"",
    ]
    for raw in others:
        assert framer.parse(raw) is None


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_parse_never_disagrees_with_protobuf(raw):
    for framer, envelope in ((SERVER_CHUNKS, pb.ServerMessage), (CLIENT_CHUNKS, pb.ClientMessage)):
        chunk = framer.parse(raw)
        if chunk is not None:
            message = envelope.FromString(raw)
            assert message.WhichOneof("body") == "chunk"
            assert bytes(chunk.data) == message.chunk.data


def test_tolerant_deserializer_reads_chunks_in_place_when_given_the_framing():
    raw = CLIENT_CHUNKS.frame([b"abc"])
    fast = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)(raw)
    assert isinstance(fast.message, RawChunk)
    assert bytes(fast.message.data) == b"abc" and fast.nbytes == len(raw)
    plain = tolerant_deserializer(pb.ClientMessage)(raw)
    assert isinstance(plain.message, pb.ClientMessage) and plain.message.chunk.data == b"abc"


def test_parse_server_message_gives_chunks_in_place_and_messages_parsed():
    assert isinstance(parse_server_message(SERVER_CHUNKS.frame([b"abc"])), RawChunk)
    finish = pb.ServerMessage(finish=pb.Finish(rounds_completed=3))
    assert parse_server_message(finish.SerializeToString()) == finish


def test_model_frames_decode_count_their_bytes_and_can_be_sent_twice():
    state = {
        "w": torch.randn(1000, 3),
        "b": torch.arange(7, dtype=torch.int64),
        "empty": torch.zeros(0),
        "h": torch.randn(33).to(torch.bfloat16),
    }
    frames = ModelFrames(
        list(state.values()),
        chunk_size=1000,
        framer=SERVER_CHUNKS,
        trailer_of=lambda checksum: pb.ServerMessage(
            trailer=pb.TensorStreamTrailer(checksum=checksum)
        ),
    )
    first, second = list(frames), list(frames)
    assert first == second
    assert frames.nbytes == sum(len(frame) for frame in first)
    decoder = TensorStreamDecoder(specs_of(state), max_chunk_size=1000)
    for frame in first[:-1]:
        chunk = SERVER_CHUNKS.parse(frame)
        assert chunk is not None
        decoder.feed(chunk.data)
    decoded = decoder.finish(pb.ServerMessage.FromString(first[-1]).trailer.checksum)
    for name, tensor in state.items():
        assert torch.equal(decoded[name].view(torch.uint8), tensor.view(torch.uint8))


def test_a_stream_that_fits_one_chunk_goes_inline_and_one_that_does_not_is_framed():
    small, big = [torch.randn(10), torch.arange(3)], [torch.randn(300)]
    inline = inline_tensors(small, chunk_size=1000)
    assert inline is not None
    _, chunks, checksum = codec_encode_state({"a": small[0], "b": small[1]})
    assert inline.data == b"".join(chunks) and inline.checksum == checksum
    assert inline_tensors(big, chunk_size=1000) is None
    trailer = lambda c: pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=c))  # noqa: E731
    small_frames = ModelFrames(small, 1000, SERVER_CHUNKS, trailer)
    assert small_frames.inline == inline and list(small_frames) == [] and small_frames.nbytes == 0
    assert ModelFrames(big, 1000, SERVER_CHUNKS, trailer).inline is None
