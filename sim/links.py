"""The driver's side of each simulated client, and the rule for a client that fails.

    job (coordinator, sessions) <-> ClientLink (one per client) <-> backend <-> ClientHost

A ``ClientLink`` is the writer of its server session (a thread drains the session's outbox and
forwards each item's wire frames through the backend) and its reader (``receive`` hands each
frame the client sent to ``session.handle``, from whichever thread the backend delivers on).
``Federation`` holds the links and applies the rule for failures:

- a client that fails while joining (its task, task options, model or data; before Ready)
  stops the simulation: the job aborts (exit 1), since a simulation needs all its clients;
- a client that fails later (training, evaluating), or whose worker or actor dies after it
  joined, is dropped as a networked job drops a member that disconnects; the job goes on
  while its rounds get ``min_clients`` updates, and aborts otherwise.

Either way the failure is logged (``client_failed``, with the traceback) and reported once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from google.protobuf.message import Message

from fedsilo.common.logging import get_logger
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import parse_server_message
from fedsilo.server.job import Job
from fedsilo.server.outbox import CLOSE, OutboxItem, OutgoingModel
from fedsilo.server.session import ClientSession
from fedsilo.sim.frames import outbox_frames, parse_client
from fedsilo.sim.host import EVALUATING, JOINING, TRAINING, ClientFailure, stage_of

# Hands one outbox item's frames to client ``index``, with the kind of message that opens it
# ("sync_model", "init_config", ...). It never raises: a backend that loses a worker reports
# that worker's clients to the Federation itself.
Forward = Callable[[int, Iterator[bytes], str], None]

WAITING = "waiting for work"


class ClientLink:
    """Carries one simulated client's session both ways; a thread pumps server -> client."""

    def __init__(self, index: int, session: ClientSession, forward: Forward) -> None:
        self.index = index
        self.session = session
        self._forward = forward
        self.stage = "starting"  # what the client is doing, as the frames say
        self.ready = False
        self.examples = (0, 0)  # training and held-out samples, from its Ready
        self._lock = threading.Lock()
        self.failure: ClientFailure | None = None  # guarded by _lock
        self._ended = False  # guarded by _lock: the session's stream is over
        self._thread = threading.Thread(target=self._pump, name=f"link-{index}", daemon=True)

    def start(self) -> None:
        """Start pumping the session's outbox to the client."""
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the session's stream to end; return whether it did within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def receive(self, frame: bytes) -> None:
        """Hand one frame the client sent to its session (none once its stream ended)."""
        if self._ended:
            return  # as a closed gRPC stream: what the client still sends is not read
        inbound = parse_client(frame)
        message = inbound.message
        if isinstance(message, pb.ClientMessage):
            kind = message.WhichOneof("body")
            if kind == "ready":
                self.ready = True
                self.examples = (message.ready.train_examples, message.ready.test_examples)
            if kind in ("ready", "send_model", "eval_result"):
                self.stage = WAITING
        self.session.handle(inbound)

    def fail(self, failure: ClientFailure) -> bool:
        """Drop the client from the job; return False if it had already failed or ended."""
        with self._lock:
            if self.failure is not None or self._ended:
                return False
            self.failure = failure
        if failure.stage in (TRAINING, EVALUATING):
            self.session.model_sent()  # it had the whole model: the drop is in that phase
        self.session.disconnect()
        return True

    def _pump(self) -> None:
        try:
            while True:
                item = self.session.outbox.get()
                if item is CLOSE:
                    return
                if self.failure is not None:
                    if isinstance(item, OutgoingModel):
                        item.abandon()
                    continue
                opening = _opening(item)
                self.stage = stage_of(opening, self.stage)
                frames = outbox_frames(item)
                self._forward(self.index, frames, str(opening.WhichOneof("body")))
                frames.close()  # a backend that lost its worker may leave some unsent
                self.session.touch()
                if isinstance(item, OutgoingModel):
                    item.abandon()  # releases the model's frames if none was taken
                    self.session.model_sent()
        finally:
            with self._lock:
                self._ended = True
            self.session.stream_ended()
            self.session.disconnect()


def _opening(item: OutboxItem) -> Message:
    """The message that opens an outbox item (for a model stream: the SyncModel or Evaluate)."""
    first = item.opening if isinstance(item, OutgoingModel) else item
    if isinstance(first, Message):
        return first
    assert isinstance(first, bytes)
    parsed = parse_server_message(first)
    return parsed if isinstance(parsed, Message) else pb.ServerMessage(chunk=pb.TensorChunk())


class Federation:
    """The simulated clients as the driver sees them, and the failure rule (module docstring)."""

    def __init__(self, job: Job, on_failure: Callable[[ClientFailure], None] | None) -> None:
        self.job = job
        self.links: list[ClientLink] = []
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self.failures: list[ClientFailure] = []  # guarded by _lock
        self._stopping = False  # guarded by _lock
        self._log = get_logger(job_id=0)

    def add(self, session: ClientSession, forward: Forward) -> ClientLink:
        """Create the link of the next client (index = number of links so far)."""
        link = ClientLink(len(self.links), session, forward)
        self.links.append(link)
        return link

    def receive(self, index: int, frame: bytes) -> None:
        """Hand a frame client ``index`` sent to its session."""
        self.links[index].receive(frame)

    def failed(self, failure: ClientFailure) -> None:
        """Drop a client that raised (or lost its worker) and report it, once."""
        if self.links[failure.index].fail(failure):
            self.report(failure)

    def lost(self, indices: list[int], reason: str) -> None:
        """Report every client of a worker or actor that is gone."""
        for index in indices:
            link = self.links[index]
            stage = link.stage if link.ready else JOINING
            self.failed(ClientFailure(index=index, stage=stage, error=reason))

    def report(self, failure: ClientFailure) -> None:
        """Log and record a failure; stop the simulation if the client had not joined."""
        self._log.error(
            "client_failed",
            client=failure.index,
            stage=failure.stage,
            error=failure.error,
            traceback=failure.traceback or None,
        )
        with self._lock:
            self.failures.append(failure)
            stop = failure.stage == JOINING and not self._stopping
            self._stopping = self._stopping or stop
        if self._on_failure is not None:
            self._on_failure(failure)
        if stop:
            self.job.request_stop(f"{failure.line} (a simulation needs all of its clients)")

    def examples(self) -> tuple[int, int]:
        """Training and held-out samples of the clients that joined."""
        return (
            sum(link.examples[0] for link in self.links),
            sum(link.examples[1] for link in self.links),
        )
