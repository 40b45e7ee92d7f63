"""The client's side of the protocol, whatever carries it: a gRPC stream or an in-process queue.

``ClientProtocol`` turns server messages into local work (load the task and data, decode the
model into the model's own tensors, evaluate, train, encode the update) and hands what to send
to a ``send`` callback. The gRPC daemon (``client/session.py``) and the simulator both drive it,
so a simulated client behaves exactly like a networked one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import structlog
import torch
from google.protobuf import json_format

from fedsilo.client.heartbeat import HeartbeatPacer
from fedsilo.common.compression import ClientCompressor, Compression
from fedsilo.common.errors import (
    CodecError,
    ConfigError,
    JobAbortedError,
    ServerRefusedError,
    SessionLostError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import check_specs_match, header_of, specs_from_header, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    PROTOCOL_VERSION,
    Outbound,
    RawChunk,
    inline_tensors,
    tensor_stream_frames,
)
from fedsilo.tasks import LocalData, Task, TrainConfig, load_task

Send = Callable[[Outbound | Iterator[bytes]], None]


@dataclass(frozen=True)
class LocalSettings:
    """What the organisation decides for itself, never the server."""

    partition: int | None = None
    data: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Only for clients that never work concurrently (fl-sim): every round overwrites all
    # weights before use, so one model per task can serve them all.
    shared_models: dict[tuple[object, ...], torch.nn.Module] | None = None


@dataclass
class _Incoming:
    """A model being received: what it is for, and its decoder."""

    kind: str  # "sync_model" or "evaluate"
    round: int
    train: pb.TrainConfig | None
    decoder: TensorStreamDecoder


class ClientProtocol:
    """One client's protocol state: job, task, model, data, and the model stream in progress."""

    def __init__(
        self,
        name: str,
        job_id: int | None,
        local: LocalSettings,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.name = name
        self.job_id = job_id
        self.local = local
        self.log = log.bind(client=name)
        self._send_to: Send | None = None
        self._joined_this_session = False
        self.client_id: int | None = None
        self.job: pb.JobConfig | None = None
        self.task: Task | None = None
        self.model: torch.nn.Module | None = None
        self.data: LocalData | None = None
        # Per client, never per (shared) model: it holds this client's top-k residual.
        self.compressor: ClientCompressor | None = None
        self._incoming: _Incoming | None = None
        self._pacer = HeartbeatPacer()
        self.rounds_done = 0

    @property
    def joined_this_session(self) -> bool:
        """Whether the current session got its InitConfig (so an outage ended)."""
        return self._joined_this_session

    def start_session(self, send: Send) -> pb.ClientMessage:
        """Begin a new stream whose outgoing messages go to ``send``; return the Hello."""
        self._send_to = send
        self._joined_this_session = False
        self._incoming = None
        hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=self.name)
        if self.job_id is not None:
            hello.job_id = self.job_id
        return pb.ClientMessage(hello=hello)

    def handle(self, message: pb.ServerMessage | RawChunk) -> bool:  # noqa: C901 - until the client has its transition table
        """Handle one server message; return True when the session is over."""
        if isinstance(message, RawChunk):
            self._on_chunk(message.data)
            return False
        kind = message.WhichOneof("body")
        if kind == "init_config":
            self._on_init(message.init_config)
        elif kind == "sync_model":
            sync = message.sync_model
            self._begin_model(kind, sync.round, sync.train, sync.model)
            self._receive_inline(sync.model)
        elif kind == "evaluate":
            self._begin_model(kind, message.evaluate.round, None, message.evaluate.model)
            self._receive_inline(message.evaluate.model)
        elif kind == "chunk":
            self._on_chunk(message.chunk.data)
        elif kind == "trailer":
            self._on_trailer(message.trailer)
        elif kind == "finish":
            self.log.info("job_finished", rounds=message.finish.rounds_completed)
            return True
        elif kind == "abort":
            if message.abort.retry:
                raise SessionLostError(f"the server stopped: {message.abort.reason}")
            raise JobAbortedError(f"the server aborted the job: {message.abort.reason}")
        elif kind == "error":
            raise ServerRefusedError(
                f"the server refused: {pb.ErrorCode.Name(message.error.code)}: "
                f"{message.error.message}"
            )
        elif kind == "heartbeat":
            pass
        else:
            self._protocol_violation(f"unexpected message {kind!r}")
        return False

    def _on_init(self, init: pb.InitConfig) -> None:
        if self._joined_this_session:
            self._protocol_violation("second InitConfig")
        self._joined_this_session = True
        try:
            setting = Compression.from_proto(init.job.compression)
        except ConfigError as exc:
            self._refuse_config(f"cannot apply the job's update compression: {exc}")
        same_job = (
            self.job is not None
            and self.client_id == init.client_id
            and _task_identity(self.job) == _task_identity(init.job)
        )
        self.client_id = init.client_id
        self.job = init.job
        self.log = self.log.bind(job_id=init.job.job_id, client_id=init.client_id)
        partition = self.local.partition if self.local.partition is not None else init.client_id
        if not same_job:  # after a reconnect to the same job, task and data are kept
            options: dict[str, Any] = json_format.MessageToDict(init.job.task_options)
            self.task = load_task(init.job.task, options)
            if self.local.shared_models is None:
                self.model = self.task.build_model(init.job.seed)
            else:  # simulated clients that work one at a time can share one set of weights
                key = _task_identity(init.job)
                if key not in self.local.shared_models:
                    self.local.shared_models[key] = self.task.build_model(init.job.seed)
                self.model = self.local.shared_models[key]
            self.data = self.task.load_data(partition, init.job.seed, self.local.data)
        if not same_job or self.compressor is None or self.compressor.setting != setting:
            self.compressor = ClientCompressor(setting)  # a fresh top-k residual
        assert self.data is not None
        self.log.info(
            "joined",
            rejoined=same_job,
            task=init.job.task,
            partition=partition,
            train_examples=self.data.train_examples,
            test_examples=self.data.test_examples,
        )
        self._send(
            pb.ClientMessage(
                ready=pb.Ready(
                    train_examples=self.data.train_examples,
                    test_examples=self.data.test_examples,
                )
            )
        )

    def _begin_model(
        self,
        kind: str,
        round_number: int,
        train: pb.TrainConfig | None,
        header: pb.TensorStreamHeader,
    ) -> None:
        if self.model is None or self.job is None or self._incoming is not None:
            self._protocol_violation(f"{kind} at the wrong time")
        assert self.model is not None and self.job is not None
        state = self.model.state_dict()
        expected = specs_of(state)
        try:
            specs = specs_from_header(
                header, sum(s.nbytes for s in expected), max_tensors=len(expected)
            )
            check_specs_match(specs, expected)
        except CodecError as exc:
            self._protocol_violation(f"model from the server does not fit the task: {exc}")
        self._incoming = _Incoming(
            kind=kind,
            round=round_number,
            train=train,
            decoder=TensorStreamDecoder(
                specs, into=_decodable(state), max_chunk_size=self.job.chunk_size
            ),
        )

    def _receive_inline(self, header: pb.TensorStreamHeader) -> None:
        """A model that came whole in its header's message: its chunk and trailer, as streamed."""
        if header.HasField("inline"):
            if header.inline.data:
                self._on_chunk(header.inline.data)
            self._on_trailer(pb.TensorStreamTrailer(checksum=header.inline.checksum))

    def _on_chunk(self, data: bytes | memoryview) -> None:
        if self._incoming is None:
            self._protocol_violation("tensor chunk outside a model stream")
        assert self._incoming is not None
        try:
            self._incoming.decoder.feed(data)
        except CodecError as exc:
            self._protocol_violation(f"bad model stream: {exc}")

    def _on_trailer(self, trailer: pb.TensorStreamTrailer) -> None:
        incoming = self._incoming
        if incoming is None:
            self._protocol_violation("trailer outside a model stream")
        assert incoming is not None and self.model is not None
        self._incoming = None
        try:
            tensors = incoming.decoder.finish(trailer.checksum)
        except CodecError as exc:
            self._protocol_violation(f"bad model stream: {exc}")
        _load_if_copied(self.model, tensors)
        self.log.debug("model_received", round=incoming.round, bytes=incoming.decoder.total_bytes)
        if incoming.kind == "sync_model":
            assert incoming.train is not None
            self._train_and_upload(incoming.round, incoming.train)
        else:
            self._evaluate_final(incoming.round)

    # ------------------------------------------------------------------ work

    def _train_and_upload(self, round_number: int, train: pb.TrainConfig) -> None:
        assert self.task is not None and self.model is not None and self.data is not None
        assert self.job is not None
        assert self.compressor is not None
        log = self.log.bind(round=round_number)
        started = time.monotonic()
        self.compressor.remember_global(self.model.state_dict())
        with self._heartbeats(), self._on_device():
            evaluation = self.task.evaluate(self.model, self.data)
            result = self.task.train(
                self.model,
                self.data,
                TrainConfig(
                    local_epochs=train.local_epochs,
                    batch_size=train.batch_size,
                    learning_rate=train.learning_rate,
                    seed=train.seed,
                    proximal_mu=train.proximal_mu,
                ),
            )
        seconds = time.monotonic() - started
        wire = self.compressor.encode(self.model.state_dict())
        send = pb.ClientMessage(
            send_model=pb.SendModel(
                round=round_number,
                train_examples=result.examples,
                metrics=pb.LocalMetrics(
                    train_loss=result.loss,
                    train_seconds=seconds,
                    evaluation=_evaluation(evaluation),
                ),
                update=header_of(specs_of(wire)),
            )
        )
        inline = inline_tensors(list(wire.values()), self.job.chunk_size)
        if inline is not None:
            send.send_model.update.inline.CopyFrom(inline)
            self._send(send)
        else:
            encoder = TensorStreamEncoder(list(wire.values()), self.job.chunk_size)
            self._send(tensor_stream_frames(send, encoder, CLIENT_CHUNKS, _client_trailer))
        self.rounds_done += 1
        log.info(
            "update_sent",
            train_loss=round(result.loss, 5),
            train_seconds=round(seconds, 3),
            eval_accuracy=round(evaluation.accuracy, 5),
        )

    def _evaluate_final(self, round_number: int) -> None:
        assert self.task is not None and self.model is not None and self.data is not None
        with self._heartbeats(), self._on_device():
            evaluation = self.task.evaluate(self.model, self.data)
        self._send(
            pb.ClientMessage(
                eval_result=pb.EvalResult(round=round_number, evaluation=_evaluation(evaluation))
            )
        )
        self.log.info(
            "final_evaluation_sent",
            round=round_number,
            accuracy=round(evaluation.accuracy, 5),
            loss=round(evaluation.loss, 5),
        )

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """Run local work on the chosen device; the model lives on the CPU for the wire."""
        assert self.model is not None
        if self.local.device.type == "cpu":
            yield
            return
        self.model.to(self.local.device)
        try:
            yield
        finally:
            self.model.to("cpu")

    def _heartbeats(self) -> AbstractContextManager[None]:
        """Send a Heartbeat every ``heartbeat_seconds`` while the body runs (long local work)."""
        interval = self.job.heartbeat_seconds if self.job is not None else 0.0
        beat = pb.ClientMessage(heartbeat=pb.Heartbeat())
        send = self._send
        return self._pacer.running(lambda: send(beat), interval)

    def _send(self, message: Outbound | Iterator[bytes]) -> None:
        if self._send_to is None:
            raise RuntimeError("start_session() first")
        self._send_to(message)

    def _refuse_config(self, reason: str) -> NoReturn:
        self._send(pb.ClientMessage(error=pb.Error(code=pb.UNSUPPORTED_CONFIG, message=reason)))
        raise ConfigError(reason)

    def _protocol_violation(self, reason: str) -> None:
        self._send(pb.ClientMessage(error=pb.Error(code=pb.ILLEGAL_MESSAGE, message=reason)))
        raise ServerRefusedError(f"protocol error from the server: {reason}")


def _decodable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Return the model's own tensors if chunks can be written into them in place."""
    if all(t.device.type == "cpu" and t.is_contiguous() for t in state.values()):
        return state
    return None


def _load_if_copied(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    state = model.state_dict()
    if any(state[name].data_ptr() != tensor.data_ptr() for name, tensor in tensors.items()):
        model.load_state_dict(tensors)


def _evaluation(evaluation: Any) -> pb.Evaluation:
    return pb.Evaluation(
        examples=evaluation.examples, loss=evaluation.loss, accuracy=evaluation.accuracy
    )


def _client_trailer(checksum: int) -> pb.ClientMessage:
    return pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))


def _task_identity(job: pb.JobConfig) -> tuple[object, ...]:
    return (job.job_id, job.task, job.task_options.SerializeToString(deterministic=True), job.seed)
