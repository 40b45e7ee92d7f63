"""A hand-written client for the tests: any message or bytes on one Session stream, with bounded
receives. Written from the generated protobuf classes and grpcio, not from fedsilo.client."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION, SESSION_METHOD_PATH
from tests.wire_helpers import decode_state, encode_state

JOB_ID = 5
RECV_TIMEOUT = 30.0
_END = object()


class RawSession:
    """One Session stream driven by hand: send any bytes or message, receive with a timeout."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        call = channel.stream_stream(
            SESSION_METHOD_PATH,
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=pb.ServerMessage.FromString,
        )(self._requests())
        threading.Thread(target=self._read, args=(call,), daemon=True).start()

    def _requests(self) -> Iterator[object]:
        while (item := self._outbox.get()) is not _END:
            yield item

    def _read(self, call: Iterator[pb.ServerMessage]) -> None:
        try:
            for message in call:
                self._inbox.put(message)
        except grpc.RpcError as exc:
            self._inbox.put(exc)
        self._inbox.put(_END)

    def send(self, *messages: pb.ClientMessage | bytes) -> None:
        for message in messages:
            self._outbox.put(message)

    def recv(self) -> pb.ServerMessage:
        item = self._inbox.get(timeout=RECV_TIMEOUT)
        assert isinstance(item, pb.ServerMessage), f"expected a message, got {item!r}"
        return item

    def expect_error(self, code: int) -> str:
        message = self.recv()
        assert message.WhichOneof("body") == "error", message
        assert message.error.code == code, (pb.ErrorCode.Name(message.error.code), message)
        return message.error.message

    def expect_closed(self) -> None:
        item = self._inbox.get(timeout=RECV_TIMEOUT)
        assert item is _END, f"expected the stream to end, got {item!r}"

    def expect_cut_off(self) -> None:
        """The server ends the stream: cleanly or by cancelling it."""
        item = self._inbox.get(timeout=RECV_TIMEOUT)
        if isinstance(item, grpc.RpcError):
            item = self._inbox.get(timeout=RECV_TIMEOUT)
        assert item is _END, f"expected the stream to end, got {item!r}"

    def drain(self, limit: int) -> list[object]:
        """Receive until the stream ends (at most ``limit`` items); return what came."""
        items: list[object] = []
        while len(items) < limit:
            item = self._inbox.get(timeout=RECV_TIMEOUT)
            if item is _END:
                return items
            items.append(item)
        raise AssertionError(f"the stream did not end within {limit} items")

    def close(self) -> None:
        self._outbox.put(_END)

    def receive_model(self) -> tuple[pb.ServerMessage, dict]:
        """Receive a SyncModel/Evaluate (inline, or chunks and trailer); return it + tensors."""
        head = self.recv()
        assert head.WhichOneof("body") in ("sync_model", "evaluate"), head
        header = head.sync_model.model if head.HasField("sync_model") else head.evaluate.model
        if header.HasField("inline"):  # a model that fits in one chunk comes in one message
            return head, decode_state(header, [header.inline.data], header.inline.checksum)
        chunks = []
        while (message := self.recv()).WhichOneof("body") == "chunk":
            chunks.append(message.chunk.data)
        assert message.WhichOneof("body") == "trailer", message
        return head, decode_state(header, chunks, message.trailer.checksum)


def hello(name: str, job_id: int | None = JOB_ID) -> pb.ClientMessage:
    message = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=name)
    if job_id is not None:
        message.job_id = job_id
    return pb.ClientMessage(hello=message)


def update_messages(round_number: int, state: dict, examples: int = 10) -> list[pb.ClientMessage]:
    header, chunks, checksum = encode_state(state)
    return [
        pb.ClientMessage(
            send_model=pb.SendModel(round=round_number, train_examples=examples, update=header)
        ),
        *(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)) for chunk in chunks),
        pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)),
    ]
