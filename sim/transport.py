"""An in-process link between one server session and one client protocol (``--workers 0``).

Every message still goes through its wire form (serialized, then parsed on the other side),
so the simulated federation runs the very code of the networked one: the server's sessions,
state machine, job loop and strategy, and the client's protocol, task and training. The
backends with worker processes or Ray actors use ``sim/links.py`` and ``sim/host.py`` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from google.protobuf.message import Message

from fedsilo.client.protocol import ClientProtocol
from fedsilo.common.errors import JobAbortedError, SessionLostError
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
from fedsilo.sim.host import EVALUATING, TRAINING, ClientFailure, failed_stage, failure_of, stage_of

_parse_client = tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS)


class InProcessLink:
    """Carries one simulated client's traffic both ways; a thread pumps server -> client.

    ``work_lock`` is shared by all links of a simulation so that clients do their local work
    one at a time (they share one model). A client that raises is dropped (its stream ends)
    and handed to ``on_failure``; an Abort from the server ends its session quietly.
    """

    def __init__(
        self,
        session: ClientSession,
        protocol: ClientProtocol,
        work_lock: threading.Lock,
        *,
        index: int = 0,
        on_failure: Callable[[ClientFailure], None] | None = None,
    ) -> None:
        self.session = session
        self.protocol = protocol
        self.index = index
        self._work_lock = work_lock
        self._on_failure = on_failure
        self.finished = threading.Event()
        self.failure: ClientFailure | None = None
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
        stage = "starting"
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
                        stage = stage_of(message, stage)
                        try:
                            over = self.protocol.handle(message)
                        except (JobAbortedError, SessionLostError):
                            over = True  # the job ended: not this client's failure
                        except Exception as exc:
                            self._fail(failure_of(self.index, failed_stage(message, stage), exc))
                            return
                        if over:
                            self.finished.set()
                        self.session.touch()
                if isinstance(item, OutgoingModel):
                    self.session.model_sent()
        finally:
            self.session.stream_ended()
            self.session.disconnect()

    def _fail(self, failure: ClientFailure) -> None:
        self.failure = failure
        if failure.stage in (TRAINING, EVALUATING):
            self.session.model_sent()  # it had the whole model: the drop is in that phase
        if self._on_failure is not None:
            self._on_failure(failure)
