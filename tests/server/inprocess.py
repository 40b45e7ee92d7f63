"""The server's real job and sessions, driven in-process by hand-written clients (no sockets).

Every message goes through its wire form, as in fl-sim. A ``ScriptedClient`` answers each model
it receives with a callback of the test's choosing, so a test can make one client late, wrong or
slow at exactly the point it is about.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from google.protobuf.message import Message

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    PROTOCOL_VERSION,
    RawChunk,
    inline_tensors,
    parse_server_message,
    serialize,
    tolerant_deserializer,
)
from fedsilo.server.app import make_job
from fedsilo.server.config import ServerConfig
from fedsilo.server.outbox import CLOSE, OutgoingModel
from tests.wire_helpers import decode_state, encode_state, header_of_state

RECV_TIMEOUT = 30.0
_parse_client = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)


@dataclass
class ReceivedModel:
    """A model stream the client received: its opening message and tensors."""

    opening: pb.ServerMessage
    tensors: dict[str, torch.Tensor]

    @property
    def round(self) -> int:
        """Round of a SyncModel (or of the Evaluate)."""
        if self.opening.HasField("sync_model"):
            return self.opening.sync_model.round
        return self.opening.evaluate.round


Answer = Callable[["ScriptedClient", ReceivedModel], None]


def echo(client: ScriptedClient, model: ReceivedModel) -> None:
    """Answer a SyncModel with the received weights (inline), an Evaluate with a result."""
    if model.opening.HasField("sync_model"):
        client.send_update(model.round, model.tensors)
    else:
        client.send(
            pb.ClientMessage(
                eval_result=pb.EvalResult(
                    round=model.round,
                    evaluation=pb.Evaluation(examples=10, loss=0.5, accuracy=0.5),
                )
            )
        )


def evaluate_only(client: ScriptedClient, model: ReceivedModel) -> None:
    """Answer an Evaluate as ``echo`` does; leave each SyncModel to the test."""
    if not model.opening.HasField("sync_model"):
        echo(client, model)


@dataclass
class ScriptedClient:
    """One client session answered by ``answer``; what it receives is kept in ``received``."""

    job: Any
    name: str
    answer: Answer = echo
    examples: int = 10
    received: list[ReceivedModel] = field(default_factory=list)
    kept: bytes = b""  # the first bytes of a broken download that a resumed SyncModel continues
    messages: queue.SimpleQueue[pb.ServerMessage] = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        self.session = self.job.open_session(f"test:{self.name}", lambda: None, None)
        self._thread = threading.Thread(target=self._pump, daemon=True, name=self.name)
        self._ended = threading.Event()

    def join(
        self,
        ready: bool = True,
        resume: pb.StreamPosition | None = None,
        download: pb.StreamPosition | None = None,
        acks: bool = True,
    ) -> None:
        """Say Hello (naming a broken upload or download, if any) and Ready; start answering."""
        hello = pb.Hello(
            protocol_version=PROTOCOL_VERSION, client_name=self.name, takes_upload_acks=acks
        )
        if resume is not None:
            hello.resume_upload.CopyFrom(resume)
        if download is not None:
            hello.resume_download.CopyFrom(download)
        self.send(pb.ClientMessage(hello=hello))
        self._thread.start()
        if ready:
            self.send(pb.ClientMessage(ready=pb.Ready(train_examples=self.examples)))

    def send(self, message: Message | bytes) -> None:
        """Deliver one message to the server session, through its wire form."""
        self.session.handle(_parse_client(serialize(message)))

    def send_update(
        self,
        round_number: int,
        tensors: dict[str, torch.Tensor],
        examples: int | None = None,
        chunk_size: int | None = None,
        metrics: pb.LocalMetrics | None = None,
    ) -> None:
        """Send an update: inline (one message), or in chunks of ``chunk_size`` bytes."""
        header = header_of_state(tensors)
        send = pb.SendModel(
            round=round_number,
            train_examples=self.examples if examples is None else examples,
            metrics=metrics or pb.LocalMetrics(train_loss=0.1, train_seconds=0.01),
            update=header,
        )
        if chunk_size is None:
            inline = inline_tensors(list(tensors.values()), 1 << 20)
            assert inline is not None, "inline test updates are small"
            send.update.inline.CopyFrom(inline)
            self.send(pb.ClientMessage(send_model=send))
            return
        _, chunks, checksum = encode_state(tensors, chunk_size)
        self.send(pb.ClientMessage(send_model=send))
        for chunk in chunks:
            self.send(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)))
        self.send(pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))

    def disconnect(self) -> None:
        """End the stream as a vanished client would."""
        self.session.disconnect()

    def wait_model(self, count: int, timeout: float = RECV_TIMEOUT) -> ReceivedModel:
        """Wait until ``count`` models have been received; return the last."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while len(self.received) < count and not deadline.is_set():
                self._ended.wait(0.01)
        finally:
            timer.cancel()
        assert len(self.received) >= count, f"{self.name}: {len(self.received)} models, not {count}"
        return self.received[count - 1]

    def _pump(self) -> None:
        opening: pb.ServerMessage | None = None
        chunks: list[bytes] = []
        try:
            for message in self._frames():
                self.messages.put(message)
                kind = message.WhichOneof("body")
                if kind in ("sync_model", "evaluate"):
                    opening, chunks = message, []
                    if kind == "sync_model" and message.sync_model.HasField("resume_offset"):
                        chunks = [self.kept[: message.sync_model.resume_offset]]
                    header = (
                        message.sync_model.model if kind == "sync_model" else message.evaluate.model
                    )
                    if header.HasField("inline"):
                        self._deliver(opening, [header.inline.data], header.inline.checksum)
                        opening = None
                elif kind == "chunk":
                    chunks.append(bytes(message.chunk.data))
                elif kind == "trailer" and opening is not None:
                    self._deliver(opening, chunks, message.trailer.checksum)
                    opening = None
        finally:
            self._ended.set()

    def _deliver(self, opening: pb.ServerMessage, chunks: list[bytes], checksum: int) -> None:
        header = (
            opening.sync_model.model if opening.HasField("sync_model") else opening.evaluate.model
        )
        model = ReceivedModel(opening, decode_state(header, chunks, checksum))
        self.received.append(model)
        self.answer(self, model)

    def _frames(self) -> Iterator[pb.ServerMessage]:
        while True:
            item = self.session.outbox.get()
            if item is CLOSE:
                self.session.stream_ended()
                return
            frames = item if isinstance(item, OutgoingModel) else [item]
            for frame in frames:
                parsed = parse_server_message(serialize(frame))  # type: ignore[arg-type]
                if isinstance(parsed, RawChunk):
                    parsed = pb.ServerMessage(chunk=pb.TensorChunk(data=bytes(parsed.data)))
                yield parsed
                self.session.touch()
            if isinstance(item, OutgoingModel):
                self.session.model_sent()


class JobRunner:
    """A job of the given config run by its coordinator on a thread."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        settings.setdefault("task", "synthetic")
        self.config = ServerConfig(job_id=0, insecure=True, out=tmp_path / "run", **settings)
        self.job = make_job(self.config, structlog.get_logger(), checkpoint=None)
        self.outcome: list[Any] = []
        self._thread = threading.Thread(target=lambda: self.outcome.append(self.job.run()))

    def client(self, name: str, answer: Answer = echo, examples: int = 10) -> ScriptedClient:
        """Open a scripted client session (not joined yet)."""
        return ScriptedClient(self.job, name, answer, examples)

    def start(self) -> None:
        """Start the coordinator."""
        self._thread.start()

    def finish(self, timeout: float = 60.0) -> Any:
        """Wait for the job's outcome (bounded)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not end in time"
        return self.outcome[0]
