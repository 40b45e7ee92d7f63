"""The clients' side of a simulation: one process's share of them, fed and answering wire bytes.

A ``ClientHost`` runs in a worker process (local backend), a Ray actor (ray backend) or the
driver itself (``--workers 0``). It holds the ``ClientProtocol`` of each client it hosts and one
model per task that they share: it serves them one at a time (a model stream is handled whole
before the next frame), and each round's model overwrites every weight before use. What is a
client's own stays in its protocol: data, client id, the update codec's state (the top-k
residual). A client is hosted by one host for the whole run, so that state never moves.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import torch
from google.protobuf.message import Message

from fedsilo.client.policy import ClientPolicy
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.common.devices import resolve_device
from fedsilo.common.errors import (
    JobAbortedError,
    PrivacyBudgetSpentError,
    SessionLostError,
    TaskFailedError,
)
from fedsilo.common.logging import configure_logging
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import Outbound, RawChunk, parse_server_message
from fedsilo.sim.frames import client_frames
from fedsilo.tasks.privacy_budget import DpSgdPolicy

JOINING = "joining"  # InitConfig: loading the task with its options, the model and the data
TRAINING = "training"  # a SyncModel stream: receiving, evaluating, training, encoding
EVALUATING = "evaluating"  # the final model's Evaluate stream
RECEIVING = "receiving the model"  # a model stream before its last frame
_STAGES = {"init_config": JOINING, "sync_model": TRAINING, "evaluate": EVALUATING}

Emit = Callable[[int, bytes], None]


def client_name(index: int) -> str:
    """Return the name simulated client ``index`` says Hello with."""
    return f"sim-{index:05d}"


def make_protocol(index: int, local: LocalSettings) -> ClientProtocol:
    """Create simulated client ``index``'s protocol: the one place fl-sim constructs one."""
    return ClientProtocol(client_name(index), None, local, structlog.get_logger())


@dataclass(frozen=True)
class HostSettings:
    """How a worker process or actor sets itself up (sent to it as JSON)."""

    device: str
    threads: int | None
    log_level: str
    # The simulation's operator chose the task: every simulated client's policy runs exactly it.
    task: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    # Every simulated silo's own DP-SGD policy (DpSgdPolicy's fields), or None.
    record_dp: dict[str, Any] | None = None
    sys_path: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialize (for a worker's command line or an actor's constructor)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> HostSettings:
        """Parse what ``to_json`` wrote."""
        fields: dict[str, Any] = json.loads(raw)
        return cls(
            device=str(fields["device"]),
            threads=None if fields["threads"] is None else int(fields["threads"]),
            log_level=str(fields["log_level"]),
            task=str(fields["task"]),
            task_options=dict(fields["task_options"]),
            record_dp=None if fields["record_dp"] is None else dict(fields["record_dp"]),
            sys_path=[str(path) for path in fields["sys_path"]],
        )

    def _dp(self) -> DpSgdPolicy | None:
        return None if self.record_dp is None else DpSgdPolicy.model_validate(self.record_dp)

    def apply(self) -> LocalSettings:
        """Set this process up (import path, torch threads, logging); return the clients'
        local settings, with one shared model per task."""
        # The driver's import path, so that a task it can load (package.module:Name) loads here.
        sys.path[:0] = [path for path in self.sys_path if path not in sys.path]
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        configure_logging(self.log_level)
        return LocalSettings(
            device=resolve_device(self.device),
            policy=ClientPolicy.pinned(self.task, self.task_options, dp=self._dp()),
            shared_models={},
        )


@dataclass(frozen=True)
class ClientFailure:
    """A simulated client that raised, or whose worker died: what it was doing, and why."""

    index: int
    stage: str  # JOINING, TRAINING, EVALUATING or another "handling <message>"
    error: str  # one line: "ValueError: ..."
    traceback: str = ""

    @property
    def line(self) -> str:
        """One line for a person: which client, doing what, and the exception."""
        return f"client {client_name(self.index)} failed while {self.stage}: {self.error}"

    def to_json(self) -> bytes:
        """Serialize (for the envelope from a worker to the driver)."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClientFailure:
        """Parse what ``to_json`` wrote."""
        fields = json.loads(raw)
        return cls(
            index=int(fields["index"]),
            stage=str(fields["stage"]),
            error=str(fields["error"]),
            traceback=str(fields["traceback"]),
        )


def failure_of(index: int, stage: str, exc: BaseException) -> ClientFailure:
    """Describe ``exc``, raised by client ``index`` while ``stage``, in one line and a traceback."""
    if isinstance(exc, TaskFailedError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the task's own exception: ``stage`` already says where
    text = str(exc).strip().splitlines()
    error = type(exc).__name__ + (f": {text[0]}" if text else "")
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ClientFailure(index=index, stage=stage, error=error, traceback=trace)


def stage_of(message: pb.ServerMessage | RawChunk | Message, current: str) -> str:
    """Return what a client is doing once it handles ``message`` (chunks continue a stream)."""
    if isinstance(message, RawChunk):
        return current
    kind = message.WhichOneof("body")
    if kind in ("chunk", "trailer"):
        return current
    return _STAGES.get(str(kind), f"handling {kind}")


def failed_stage(message: pb.ServerMessage | RawChunk, stage: str) -> str:
    """Say what a client that raised on ``message`` was doing: a model's work starts only once
    the whole model is in (its trailer, or the inline model in the opening message)."""
    if stage not in (TRAINING, EVALUATING):
        return stage
    if isinstance(message, pb.ServerMessage):
        kind = message.WhichOneof("body")
        if kind == "trailer":
            return stage
        if kind in ("sync_model", "evaluate"):
            header = getattr(message, str(kind)).model
            if header.HasField("inline"):
                return stage
    return RECEIVING


class ClientHost:
    """Hosts a share of the simulated clients and hands them wire frames, one at a time.

    ``emit(index, frame)`` receives every frame client ``index`` sends, from the thread that
    calls ``deliver`` or from the client's heartbeat thread: it must be thread-safe.
    """

    def __init__(self, local: LocalSettings, emit: Emit) -> None:
        self.local = local
        self._emit = emit
        self._clients: dict[int, ClientProtocol] = {}
        self._stage: dict[int, str] = {}
        self._lock = threading.Lock()  # one client at a time: they share the model

    def start(self, index: int) -> bytes:
        """Create client ``index``; return the wire bytes of its Hello."""
        return self._create(index, quiet=None).SerializeToString()

    def adopt(self, index: int, init_config: bytes) -> ClientFailure | None:
        """Host a copy of client ``index``, joined with its ``init_config`` frame; return its
        failure if it raised. Its Hello and Ready are not sent: the client sent them once,
        from its first host (``sim/placement.py``)."""
        quiet = threading.Event()
        quiet.set()
        self._create(index, quiet)
        failure = self.deliver(index, init_config)
        quiet.clear()
        return failure

    def _create(self, index: int, quiet: threading.Event | None) -> pb.ClientMessage:
        def send(item: Outbound | Iterator[bytes]) -> None:
            if quiet is not None and quiet.is_set():
                return
            for frame in client_frames(item):
                self._emit(index, frame)

        protocol = make_protocol(index, self.local)
        self._clients[index] = protocol
        self._stage[index] = "starting"
        return protocol.start_session(send)

    def deliver(self, index: int, frame: bytes) -> ClientFailure | None:
        """Hand one server frame to client ``index``; return its failure if it raised.

        A client whose session is over (finished, aborted or failed) ignores what still comes.
        """
        with self._lock:
            protocol = self._clients.get(index)
            if protocol is None:
                return None
            message = parse_server_message(frame)
            stage = self._stage[index] = stage_of(message, self._stage[index])
            try:
                over = protocol.handle(message)
            except (JobAbortedError, SessionLostError, PrivacyBudgetSpentError):
                over = True  # the job ended, or the silo left it: not this client's failure
            except Exception as exc:  # reported to the driver, which decides: drop or stop
                self._forget(index)
                return failure_of(index, failed_stage(message, stage), exc)
            if over:
                self._forget(index)
            return None

    def _forget(self, index: int) -> None:
        self._clients.pop(index, None)
        self._stage.pop(index, None)
