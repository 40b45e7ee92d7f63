"""Wire bytes between the job (driver) and the simulated clients, wherever those run.

Every message crosses as its wire form: the server's outbox items are serialized here and
parsed by the client's own deserializer on the other side, and the other way round. Between
the driver and a worker process each frame travels in an envelope of five bytes (what it is,
which client); nothing is pickled.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from enum import IntEnum

from google.protobuf.message import Message

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    Inbound,
    Outbound,
    serialize,
    tolerant_deserializer,
)
from fedsilo.server.outbox import OutboxItem, OutgoingModel

parse_client = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)

_ENVELOPE = struct.Struct("!BI")


class Kind(IntEnum):
    """What an envelope carries."""

    START = 1  # driver -> worker: create the client, answer with its Hello
    FRAME = 2  # either way: one wire frame of the client's session
    QUIT = 3  # driver -> worker: every session is over, exit
    HELLO = 4  # worker -> driver: the Hello of a client just created
    FAILED = 5  # worker -> driver: the client raised; the payload is a ClientFailure as JSON
    ADOPT = 6  # driver -> worker: host a copy of the client; the payload is its InitConfig frame
    END = 7  # driver -> worker: the model stream just sent is whole; answer DONE once handled
    DONE = 8  # worker -> driver: every frame before END is handled (the worker is free)


def outbox_frames(item: OutboxItem) -> Generator[bytes, None, None]:
    """Yield the wire frames of one outbox item: a message, a prebuilt frame, a model stream."""
    frames = item if isinstance(item, OutgoingModel) else [item]
    for frame in frames:
        assert isinstance(frame, (bytes, Message))
        yield serialize(frame)


def client_frames(item: Outbound | Iterator[bytes]) -> Iterator[bytes]:
    """Yield the wire frames of what a client protocol sends: one message or a whole stream."""
    frames: Iterator[Outbound] = iter([item]) if isinstance(item, (bytes, Message)) else item
    for frame in frames:
        yield serialize(frame)


def is_ready(inbound: Inbound[pb.ClientMessage]) -> bool:
    """Whether a parsed client frame is its Ready (the client has loaded its task and data)."""
    message = inbound.message
    return isinstance(message, pb.ClientMessage) and message.HasField("ready")


def seal(kind: Kind, index: int, payload: bytes = b"") -> bytes:
    """Return one envelope: ``kind``, the client's index, then ``payload``."""
    return _ENVELOPE.pack(kind, index) + payload


def unseal(envelope: bytes) -> tuple[Kind, int, bytes]:
    """Return (kind, client index, payload) of an envelope ``seal`` made."""
    kind, index = _ENVELOPE.unpack_from(envelope)
    return Kind(kind), index, envelope[_ENVELOPE.size :]
