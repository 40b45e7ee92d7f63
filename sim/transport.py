"""An in-process link between one server session and one client protocol: no sockets.

Every message still goes through its wire form (serialized, then parsed on the other side),
so the simulated federation runs the very code of the networked one: the server's sessions,
state machine, job loop and strategy, and the client's protocol, task and training.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from google.protobuf.message import Message

from fedsilo.client.protocol import ClientProtocol
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    Outbound,
    parse_server_message,
    serialize,
    tolerant_deserializer,
)
from fedsilo.server.outbox import CLOSE, OutgoingModel
from fedsilo.server.session import ClientSession

_parse_client = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)


class InProcessLink:
    """Carries one simulated client's traffic both ways; a thread pumps server -> client.

    ``work_lock`` is shared by all links of a simulation so that clients do their local work
    one at a time (a CPU runs them no faster in parallel, and order stays reproducible).
    """

    def __init__(
        self, session: ClientSession, protocol: ClientProtocol, work_lock: threading.Lock
    ) -> None:
        self.session = session
        self.protocol = protocol
        self._work_lock = work_lock
        self.finished = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name=f"sim-{protocol.name}", daemon=True)

    def start(self) -> None:
        """Say Hello (in the caller's thread, so ids follow call order) and start pumping."""
        hello = self.protocol.start_session(self._to_server)
        self._to_server(hello)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the pump to end (after the server closed the session)."""
        self._thread.join(timeout)

    def _to_server(self, item: Outbound | Iterator[bytes]) -> None:
        frames: Iterator[Outbound] = iter([item]) if isinstance(item, (bytes, Message)) else item
        for frame in frames:
            self.session.handle(_parse_client(serialize(frame)))

    def _pump(self) -> None:
        try:
            while True:
                item = self.session.outbox.get()
                if item is CLOSE:
                    return
                frames = item if isinstance(item, OutgoingModel) else [item]
                # A whole model stream (header, chunks, trailer) under one hold of the lock:
                # decoding and the training that follows must not interleave with another
                # client's, since simulated clients share one model.
                with self._work_lock:
                    for frame in frames:
                        assert isinstance(frame, (bytes, Message))
                        message = parse_server_message(serialize(frame))
                        if self.protocol.handle(message):
                            self.finished.set()
                        self.session.touch()
                if isinstance(item, OutgoingModel):
                    self.session.model_sent()
        except Exception as exc:  # recorded; the simulator re-raises it
            self.failure = exc
        finally:
            self.session.stream_ended()
            self.session.disconnect()
