"""A hostile coordinator: a real gRPC server on 127.0.0.1 that a real ``fl-client`` dials.

Written from the wire contract alone (the classes generated from proto/fedsilo/v1/federation.proto,
grpcio, and the rules of docs/protocol.md: the task hash, tensor bytes, the xxh3-64 checksum),
never from ``fedsilo.server``, so it can send what no fedsilo server would. Each test gives it a
script: a generator that reads the client's messages through a ``Peer`` and yields what to send
(messages, or raw bytes already serialized).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import torch
import xxhash

from fedsilo.common.proto import federation_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name  # "fedsilo.v1.Federation"
PROTOCOL_VERSION = 2  # docs/protocol.md, "Version"
CHUNK_SIZE = 1 << 20
READ_TIMEOUT = 30.0  # seconds a script waits for the client's next message


class Peer:
    """The client as the script sees it: its messages, in order."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[pb.ClientMessage | None] = queue.SimpleQueue()
        self.closed = threading.Event()
        self.hung_up = False  # set by a script that ends the stream without waiting for the client

    def hang_up(self) -> None:
        """End the stream as soon as the script returns (a server that just goes away)."""
        self.hung_up = True

    def put(self, message: pb.ClientMessage | None) -> None:
        """Called by the reader thread; None when the client's side of the stream ended."""
        if message is None:
            self.closed.set()
        self._inbox.put(message)

    def next(self, kind: str) -> Any:
        """Return the body of the client's next message, which must be of ``kind``."""
        message = self._inbox.get(timeout=READ_TIMEOUT)
        assert message is not None, f"the client hung up while the script waited for {kind}"
        got = message.WhichOneof("body")
        assert got == kind, f"expected {kind} from the client, got {got}: {message}"
        return getattr(message, kind)

    def next_any(self) -> tuple[str, Any]:
        """Return the kind and body of the client's next message, whatever it is."""
        message = self._inbox.get(timeout=READ_TIMEOUT)
        assert message is not None, "the client hung up"
        kind = message.WhichOneof("body")
        assert kind is not None
        return kind, getattr(message, kind)

    def wait_closed(self, timeout: float = READ_TIMEOUT) -> None:
        """Block until the client ends its side of the stream (bounded)."""
        self.closed.wait(timeout)


Script = Callable[[Peer], Iterator[pb.ServerMessage | bytes]]


class HostileCoordinator:
    """Serves one script per Session stream; records every message any client sent."""

    def __init__(self, *scripts: Script, credentials: grpc.ServerCredentials | None = None) -> None:
        self._scripts = list(scripts)  # one per session, in order; the last one repeats
        self.received: list[pb.ClientMessage] = []
        self.sessions = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.stream_stream_rpc_method_handler(
            self._session,
            request_deserializer=pb.ClientMessage.FromString,
            response_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        )
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Session": handler})]
        )
        if credentials is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:  # the federation's server certificate, e.g. to face a client with a bundle
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)

    def __enter__(self) -> HostileCoordinator:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def errors(self) -> list[pb.Error]:
        """Every Error the client sent."""
        with self._lock:
            return [m.error for m in self.received if m.HasField("error")]

    def _session(
        self, requests: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage | bytes]:
        with self._lock:
            script = self._scripts[min(self.sessions, len(self._scripts) - 1)]
            self.sessions += 1
        peer = Peer()

        def read() -> None:
            try:
                for message in requests:
                    with self._lock:
                        self.received.append(message)
                    peer.put(message)
            except grpc.RpcError:
                pass
            finally:
                peer.put(None)

        threading.Thread(target=read, daemon=True).start()
        yield from script(peer)
        if not peer.hung_up:
            peer.wait_closed()  # let the client's last messages (its Error) arrive


# ---------------------------------------------------------------- the wire, by the book


def task_identity(name: str, options: dict[str, Any]) -> tuple[str, str]:
    """Return (options JSON, hash) as docs/protocol.md defines them."""
    options_json = json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(name.encode() + b"\x00" + options_json.encode()).hexdigest()
    return options_json, digest


def train_config(**fields: Any) -> pb.TrainConfig:
    """A TrainConfig with sensible values, overridden by ``fields``."""
    values = {"local_epochs": 1, "batch_size": 8, "learning_rate": 0.1, **fields}
    return pb.TrainConfig(**values)


def init_config(task: str, options: dict[str, Any], **job: Any) -> pb.ServerMessage:
    """An InitConfig for ``task`` with a correct identity; ``job`` overrides JobConfig fields."""
    options_json, digest = task_identity(task, options)
    fields: dict[str, Any] = {
        "job_id": 5,
        "seed": 0,
        "rounds": 2,
        "chunk_size": CHUNK_SIZE,
        "heartbeat_seconds": 1.0,
        "progress_timeout_seconds": 4.0,
        "train": train_config(),
        **job,
    }
    config = pb.JobConfig(task=task, task_options_json=options_json, task_hash=digest, **fields)
    return pb.ServerMessage(init_config=pb.InitConfig(client_id=0, job=config))


def tensor_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """Every tensor's raw little-endian bytes, in order, back to back."""
    return b"".join(
        t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in state.values()
    )


def header(state: dict[str, torch.Tensor]) -> pb.TensorStreamHeader:
    """The header describing ``state``: name, dtype name, shape and byte count of each tensor."""
    out = pb.TensorStreamHeader()
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        dtype = str(tensor.dtype).removeprefix("torch.")
        out.tensors.add(name=name, dtype=dtype, shape=list(tensor.shape), nbytes=nbytes)
        out.total_bytes += nbytes
    return out


def sync_inline(
    state: dict[str, torch.Tensor],
    round_number: int = 1,
    train: pb.TrainConfig | None = None,
    checksum: int | None = None,
) -> pb.ServerMessage:
    """A SyncModel carrying ``state`` inline, with its xxh3-64 (seed 0) unless ``checksum``."""
    data = tensor_bytes(state)
    model = header(state)
    model.inline.data = data
    model.inline.checksum = xxhash.xxh3_64_intdigest(data) if checksum is None else checksum
    sync = pb.SyncModel(round=round_number, train=train or train_config(), model=model)
    return pb.ServerMessage(sync_model=sync)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def sync_with_many_tensors(count: int) -> bytes:
    """A serialized ServerMessage whose SyncModel header lists ``count`` one-byte tensors."""
    one = pb.TensorStreamHeader(
        tensors=[pb.TensorSpec(name="t", dtype="uint8", shape=[1], nbytes=1)]
    ).SerializeToString()
    model = one * count  # repeated fields concatenate; duplicate names are the server's problem
    sync = pb.SyncModel(round=1, train=train_config()).SerializeToString() + _field(3, model)
    return _field(pb.ServerMessage.DESCRIPTOR.fields_by_name["sync_model"].number, sync)
