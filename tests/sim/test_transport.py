"""The simulator's links: a whole model stream is handled under one hold of the work lock."""

from __future__ import annotations

import queue
import threading
import time

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import SERVER_CHUNKS, ModelFrames
from fedsilo.server.session import CLOSE, OutgoingModel
from fedsilo.sim.transport import InProcessLink


class RecordingProtocol:
    """Stands in for ClientProtocol: records which stream each handled frame belonged to."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def start_session(self, send):
        return pb.ClientMessage(heartbeat=pb.Heartbeat())

    def handle(self, message: pb.ServerMessage) -> bool:
        self.log.append(self.name)
        time.sleep(0)  # let another pump thread run if the lock allowed it
        return False


class FakeSession:
    """Stands in for the server's ClientSession: an outbox and no-op hooks."""

    def __init__(self) -> None:
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()

    def handle(self, inbound) -> None:
        pass

    def touch(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def model_sent(self) -> None:
        pass

    def stream_ended(self) -> None:
        pass


def test_model_streams_of_two_clients_never_interleave() -> None:
    log: list[str] = []
    lock = threading.Lock()
    frames = ModelFrames(
        [torch.ones(480, dtype=torch.uint8)],
        chunk_size=10,
        framer=SERVER_CHUNKS,
        trailer_of=lambda checksum: pb.ServerMessage(trailer=pb.TensorStreamTrailer()),
    )
    opening = pb.ServerMessage(heartbeat=pb.Heartbeat()).SerializeToString()
    links = []
    for name in ("a", "b", "c"):
        session = FakeSession()
        link = InProcessLink(session, RecordingProtocol(name, log), lock)  # type: ignore[arg-type]
        for _ in range(3):
            session.outbox.put(OutgoingModel(opening, frames))  # 1 + 48 chunks + trailer = 50
        session.outbox.put(CLOSE)
        links.append(link)
    for link in links:
        link.start()
    for link in links:
        link.join(timeout=30)
    assert len(log) == 3 * 3 * 50
    runs = [log[i : i + 50] for i in range(0, len(log), 50)]
    assert all(len(set(run)) == 1 for run in runs), "a stream was interleaved with another"
