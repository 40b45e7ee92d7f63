"""How protobuf messages meet gRPC: the Session method, (de)serializers and prebuilt frames.

Both daemons register the one Session method by hand (instead of generated grpc stubs) so that
they can send *pre-serialized* frames: the server serializes a round's model once and hands the
same bytes to every client's stream, and tensor chunks are framed straight from memoryviews.
Names and field numbers all come from the generated descriptors, so the .proto stays the source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from google.protobuf.message import DecodeError, Message

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.tensor_stream import TensorStreamEncoder

# 2: JobConfig carries the task identity (canonical options JSON and hash, no protobuf Struct)
# and the job's training settings. A version-1 peer would read the options as empty and run the
# task with its defaults, so the two refuse each other at Hello instead.
PROTOCOL_VERSION = 2

_SERVICE = pb.DESCRIPTOR.services_by_name["Federation"]
SERVICE_NAME: str = _SERVICE.full_name
SESSION_METHOD_NAME: str = _SERVICE.methods_by_name["Session"].name
SESSION_METHOD_PATH = f"/{SERVICE_NAME}/{SESSION_METHOD_NAME}"

# Room for everything in a message besides a chunk's raw bytes (headers of big models, metrics).
MESSAGE_OVERHEAD_BYTES = 4 << 20
# The largest chunk size a job may choose; a client's channel takes messages up to this plus
# the overhead, before it knows the job's chunk size, and refuses a job asking for more.
MAX_CHUNK_SIZE = 64 << 20

_LEN = 2  # protobuf wire type of length-delimited fields
_CHUNK_DATA_FIELD = pb.TensorChunk.DESCRIPTOR.fields_by_name["data"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field_number: int) -> bytes:
    return _varint((field_number << 3) | _LEN)


def _read_varint(raw: memoryview, position: int) -> tuple[int, int]:
    """Return (value, next position) of the varint at ``position``; (-1, 0) if there is none."""
    value = shift = 0
    for index in range(position, min(position + 10, len(raw))):
        byte = raw[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return -1, 0


@dataclass(frozen=True)
class RawChunk:
    """A TensorChunk read straight from its wire form: ``data`` views the received bytes."""

    data: memoryview


@dataclass(frozen=True)
class ChunkFramer:
    """Writes the wire form of ``Envelope{chunk: TensorChunk{data}}`` without building objects.

    Building a protobuf object per chunk costs a copy and a Python object; this writes the same
    bytes the protobuf library would, with one copy of the data.
    """

    envelope_field: int

    def frame(self, parts: Sequence[memoryview | bytes]) -> bytes:
        """Return the serialized envelope carrying the concatenation of ``parts`` as one chunk."""
        size = sum(memoryview(part).nbytes for part in parts)
        if size == 0:  # proto3 leaves an empty bytes field out
            return _tag(self.envelope_field) + _varint(0)
        inner_prefix = _tag(_CHUNK_DATA_FIELD) + _varint(size)
        outer_prefix = _tag(self.envelope_field) + _varint(len(inner_prefix) + size)
        return b"".join([outer_prefix, inner_prefix, *parts])

    def frame_size(self, size: int) -> int:
        """Return the length of the frame carrying a chunk of ``size`` bytes."""
        if size == 0:
            return len(_tag(self.envelope_field)) + 1
        inner = len(_tag(_CHUNK_DATA_FIELD)) + len(_varint(size)) + size
        return len(_tag(self.envelope_field)) + len(_varint(inner)) + inner

    def parse(self, raw: bytes) -> RawChunk | None:
        """Return the chunk if ``raw`` is exactly a frame as ``frame`` writes it, else None.

        The inverse of ``frame``, without building protobuf objects or copying the data:
        anything else (another message, or a chunk encoded some other legal way) is left to
        the protobuf parser, so the result never differs from what protobuf would read.
        """
        view = memoryview(raw)
        tag = _tag(self.envelope_field)
        if view[: len(tag)] != tag:
            return None
        outer, position = _read_varint(view, len(tag))
        if outer != len(view) - position:
            return None
        if outer == 0:
            return RawChunk(view[position:])
        inner_tag = _tag(_CHUNK_DATA_FIELD)
        if view[position : position + len(inner_tag)] != inner_tag:
            return None
        size, start = _read_varint(view, position + len(inner_tag))
        if size != len(view) - start:
            return None
        return RawChunk(view[start:])


SERVER_CHUNKS = ChunkFramer(pb.ServerMessage.DESCRIPTOR.fields_by_name["chunk"].number)
CLIENT_CHUNKS = ChunkFramer(pb.ClientMessage.DESCRIPTOR.fields_by_name["chunk"].number)

Outbound = Message | bytes
"""What a stream may send: a message, or bytes that are already one serialized message."""


def serialize(message: Outbound) -> bytes:
    """Serialize a message; pass prebuilt frames through untouched."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Inbound(Generic[M]):
    """A received message with its size on the wire.

    ``message`` is a tensor chunk read in place (the hot path of an upload), any other parsed
    message, or None when the bytes did not parse.
    """

    message: M | RawChunk | None
    nbytes: int


def tolerant_deserializer(
    message_type: type[M], chunks: ChunkFramer | None = None
) -> Callable[[bytes], Inbound[M]]:
    """Return a deserializer that never raises, so garbage can be answered with an Error.

    With ``chunks``, tensor chunks in that framing skip protobuf and keep their bytes in place.
    """

    def deserialize(raw: bytes) -> Inbound[M]:
        chunk = chunks.parse(raw) if chunks is not None else None
        if chunk is not None:
            return Inbound(chunk, len(raw))
        try:
            return Inbound(message_type.FromString(raw), len(raw))
        except (DecodeError, RuntimeError, ValueError):
            return Inbound(None, len(raw))

    return deserialize


def parse_server_message(raw: bytes) -> pb.ServerMessage | RawChunk:
    """The client's deserializer: model chunks in place, anything else through protobuf."""
    chunk = SERVER_CHUNKS.parse(raw)
    return chunk if chunk is not None else pb.ServerMessage.FromString(raw)


class ModelFrames:
    """The chunk frames and trailer of one model, framed lazily each time it is iterated.

    The server sends the same model to every client of a round: the checksum and the byte
    count are computed once, and each stream frames its chunks straight from the (immutable)
    tensors as it goes, so no serialized copy of the model is ever held.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        chunk_size: int,
        framer: ChunkFramer,
        trailer_of: Callable[[int], Message],
    ) -> None:
        self._tensors = list(tensors)
        self._chunk_size = chunk_size
        self._framer = framer
        # A model that fits in one chunk travels inline, in the message that opens the stream.
        self.inline = inline_tensors(self._tensors, chunk_size)
        self.nbytes = 0  # bytes after the opening message
        self.trailer = b""
        if self.inline is None:
            encoder = TensorStreamEncoder(self._tensors, chunk_size)
            chunk_bytes = [sum(part.nbytes for part in parts) for parts in encoder]
            self.trailer = serialize(trailer_of(encoder.checksum))
            self.nbytes = sum(framer.frame_size(n) for n in chunk_bytes) + len(self.trailer)
        self._unfinished = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        return self.frames_from(0)

    def frames_from(self, start: int) -> Iterator[bytes]:
        """Yield the chunk frames of bytes ``start ..`` (a resumed download), then the trailer."""
        if self.inline is not None:
            return
        encoder = TensorStreamEncoder(self._tensors, self._chunk_size, checksum=False, start=start)
        for parts in encoder:
            yield self._framer.frame(parts)
        yield self.trailer

    def reserve(self) -> None:
        """Count one more stream that will read the tensors (until ``release``)."""
        with self._lock:
            self._unfinished += 1

    def release(self) -> None:
        """A reserved stream is done with the tensors (sent, or abandoned)."""
        with self._lock:
            self._unfinished -= 1

    @property
    def idle(self) -> bool:
        """Whether no reserved stream may still read the tensors: they may be reused."""
        with self._lock:
            return self._unfinished == 0


def inline_tensors(tensors: Sequence[torch.Tensor], chunk_size: int) -> pb.InlineTensors | None:
    """The whole tensor stream as one InlineTensors if its bytes fit in one chunk, else None.

    Small models then cross in one message each way instead of three (header, chunk, trailer):
    for a tiny model the per-message cost is most of a round.
    """
    encoder = TensorStreamEncoder(tensors, chunk_size)
    if encoder.total_bytes > chunk_size:
        return None
    data = b"".join(part for parts in encoder for part in parts)
    return pb.InlineTensors(data=data, checksum=encoder.checksum)


def tensor_stream_frames(
    header_message: Message,
    encoder: TensorStreamEncoder,
    framer: ChunkFramer,
    trailer_of: Callable[[int], Message],
) -> Iterator[bytes]:
    """Yield the serialized frames of a whole tensor stream: header message, chunks, trailer.

    Lazy, so an upload holds one chunk in flight, never a second copy of the model.
    """
    yield serialize(header_message)
    for parts in encoder:
        yield framer.frame(parts)
    yield serialize(trailer_of(encoder.checksum))


# Transport liveness, the same on both sides: a ping every 10 s on an idle connection, and a
# peer that does not answer one within 5 s is dead. The server accepts pings every 4 s or more
# so that a client's pings never count as abuse. Not user knobs: the one user knob for
# liveness is the server's progress_timeout, enforced by the application.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_PING_POLICY: list[tuple[str, int]] = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def channel_options(chunk_size: int) -> list[tuple[str, int]]:
    """Return the gRPC options both daemons use: message caps and keepalive."""
    limit = chunk_size + MESSAGE_OVERHEAD_BYTES
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        *KEEPALIVE_OPTIONS,
    ]
