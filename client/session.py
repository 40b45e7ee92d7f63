"""The client's side of the Session stream: join, then per round receive, train, upload.

The client only dials out. One bidirectional stream carries the whole session; what the client
sends goes through an outbox that the stream's request iterator drains, so an upload is framed
lazily, one chunk at a time, straight from the model's own tensors.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
import torch
from google.protobuf import json_format

from fedsilo.client.config import ClientConfig
from fedsilo.client.connection import Endpoint, connect
from fedsilo.client.reconnect import Outage
from fedsilo.common import codec
from fedsilo.common.errors import (
    CodecError,
    ConnectError,
    JobAbortedError,
    ServerRefusedError,
    SessionLostError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.task import LocalData, Task, TrainConfig, load_task
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    PROTOCOL_VERSION,
    SESSION_METHOD_PATH,
    Outbound,
    serialize,
    tensor_stream_frames,
)


class _Close:
    """Marker that ends the request stream."""


_CLOSE = _Close()
OutboxItem = Outbound | Iterator[bytes] | _Close


@dataclass
class _Incoming:
    """A model being received: what it is for, and its decoder."""

    kind: str  # "sync_model" or "evaluate"
    round: int
    train: pb.TrainConfig | None
    decoder: codec.TensorStreamDecoder


class FederationClient:
    """Runs one client session against one server until FINISH, ABORT or an error."""

    def __init__(
        self,
        config: ClientConfig,
        endpoint: Endpoint,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.log = log.bind(client=endpoint.name)
        self._outbox: queue.SimpleQueue[OutboxItem] = queue.SimpleQueue()
        self._joined_this_session = False
        self.client_id: int | None = None
        self.job: pb.JobConfig | None = None
        self.task: Task | None = None
        self.model: torch.nn.Module | None = None
        self.data: LocalData | None = None
        self._incoming: _Incoming | None = None
        self.rounds_done = 0

    # ------------------------------------------------------------------ top level

    def run(self) -> None:
        """Take part until the job finishes, reconnecting after a lost connection.

        An outage (from the moment a session breaks until the server sends InitConfig again)
        may last ``connect_timeout`` seconds; then ConnectError says why. Other FedsiloErrors
        report refusals and aborts.
        """
        outage: Outage | None = Outage(self.config.connect_timeout)
        while True:
            assert outage is not None
            try:
                self._session_once(outage)
                return
            except SessionLostError as lost:
                if self._joined_this_session:
                    outage = Outage(self.config.connect_timeout)
                delay = outage.next_delay()
                if delay is None:
                    raise ConnectError(
                        f"no session with the server at {self.endpoint.address} within "
                        f"{self.config.connect_timeout:g}s (--connect-timeout): {lost}"
                    ) from lost
                self.log.warning("connection_lost", reason=str(lost), retry_in=round(delay, 2))
                time.sleep(delay)

    def _session_once(self, outage: Outage) -> None:
        """Run one stream from Hello to Finish; raise SessionLostError if it breaks."""
        self._joined_this_session = False
        self._incoming = None
        self._outbox = queue.SimpleQueue()
        channel = connect(self.endpoint, max(outage.remaining, 0.1))
        call = channel.stream_stream(
            SESSION_METHOD_PATH,
            request_serializer=serialize,
            response_deserializer=pb.ServerMessage.FromString,
        )(self._requests(self._outbox))
        finished = False
        try:
            hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=self.endpoint.name)
            if self.endpoint.job_id is not None:
                hello.job_id = self.endpoint.job_id
            self._send(pb.ClientMessage(hello=hello))
            for message in call:
                if self._handle(message):
                    # Half-close our side and read on until the server ends the stream, so
                    # that no grpc thread is still busy with this call when the process exits.
                    finished = True
                    self._outbox.put(_CLOSE)
        except grpc.RpcError as exc:
            if not finished:
                raise SessionLostError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            self._outbox.put(_CLOSE)
            call.cancel()
            channel.close()
        if not finished:
            raise SessionLostError("the server closed the session early")

    # ------------------------------------------------------------------ dispatch

    def _handle(self, message: pb.ServerMessage) -> bool:
        """Handle one server message; return True when the session is over."""
        kind = message.WhichOneof("body")
        if kind == "init_config":
            self._on_init(message.init_config)
        elif kind == "sync_model":
            self._begin_model(
                kind, message.sync_model.round, message.sync_model.train, message.sync_model.model
            )
        elif kind == "evaluate":
            self._begin_model(kind, message.evaluate.round, None, message.evaluate.model)
        elif kind == "chunk":
            self._on_chunk(message.chunk)
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
        same_job = (
            self.job is not None
            and self.client_id == init.client_id
            and _task_identity(self.job) == _task_identity(init.job)
        )
        self.client_id = init.client_id
        self.job = init.job
        self.log = self.log.bind(job_id=init.job.job_id, client_id=init.client_id)
        partition = self.config.partition if self.config.partition is not None else init.client_id
        if not same_job:  # after a reconnect to the same job, task and data are kept
            options: dict[str, Any] = json_format.MessageToDict(init.job.task_options)
            self.task = load_task(init.job.task, options)
            self.model = self.task.build_model(init.job.seed)
            self.data = self.task.load_data(partition, init.job.seed, self.config.data)
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
        expected = codec.specs_of(state)
        try:
            specs = codec.specs_from_header(
                header, sum(s.nbytes for s in expected), max_tensors=len(expected)
            )
            codec.check_specs_match(specs, expected)
        except CodecError as exc:
            self._protocol_violation(f"model from the server does not fit the task: {exc}")
        self._incoming = _Incoming(
            kind=kind,
            round=round_number,
            train=train,
            decoder=codec.TensorStreamDecoder(
                specs, into=_decodable(state), max_chunk_size=self.job.chunk_size
            ),
        )

    def _on_chunk(self, chunk: pb.TensorChunk) -> None:
        if self._incoming is None:
            self._protocol_violation("tensor chunk outside a model stream")
        assert self._incoming is not None
        try:
            self._incoming.decoder.feed(chunk.data)
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
        if incoming.kind == "sync_model":
            assert incoming.train is not None
            self._train_and_upload(incoming.round, incoming.train)
        else:
            self._evaluate_final(incoming.round)

    # ------------------------------------------------------------------ work

    def _train_and_upload(self, round_number: int, train: pb.TrainConfig) -> None:
        assert self.task is not None and self.model is not None and self.data is not None
        assert self.job is not None
        log = self.log.bind(round=round_number)
        started = time.monotonic()
        with self._heartbeats():
            evaluation = self.task.evaluate(self.model, self.data)
            result = self.task.train(
                self.model,
                self.data,
                TrainConfig(
                    local_epochs=train.local_epochs,
                    batch_size=train.batch_size,
                    learning_rate=train.learning_rate,
                    seed=train.seed,
                ),
            )
        seconds = time.monotonic() - started
        state = self.model.state_dict()
        send = pb.ClientMessage(
            send_model=pb.SendModel(
                round=round_number,
                train_examples=result.examples,
                metrics=pb.LocalMetrics(
                    train_loss=result.loss,
                    train_seconds=seconds,
                    evaluation=_evaluation(evaluation),
                ),
                update=codec.header_of(codec.specs_of(state)),
            )
        )
        encoder = codec.TensorStreamEncoder(list(state.values()), self.job.chunk_size)
        self._outbox.put(tensor_stream_frames(send, encoder, CLIENT_CHUNKS, _client_trailer))
        self.rounds_done += 1
        log.info(
            "update_sent",
            train_loss=round(result.loss, 5),
            train_seconds=round(seconds, 3),
            eval_accuracy=round(evaluation.accuracy, 5),
        )

    def _evaluate_final(self, round_number: int) -> None:
        assert self.task is not None and self.model is not None and self.data is not None
        with self._heartbeats():
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
    def _heartbeats(self) -> Iterator[None]:
        """Send a Heartbeat every ``heartbeat_seconds`` while the body runs (long local work)."""
        interval = self.job.heartbeat_seconds if self.job is not None else 0.0
        if interval <= 0:
            yield
            return
        done = threading.Event()
        outbox = self._outbox
        beat = pb.ClientMessage(heartbeat=pb.Heartbeat())

        def beat_until_done() -> None:
            while not done.wait(interval):
                outbox.put(beat)

        thread = threading.Thread(target=beat_until_done, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _send(self, message: Outbound) -> None:
        self._outbox.put(message)

    @staticmethod
    def _requests(outbox: queue.SimpleQueue[OutboxItem]) -> Iterator[Outbound]:
        while True:
            item = outbox.get()
            if isinstance(item, _Close):
                return
            if isinstance(item, Iterator):
                yield from item
            else:
                yield item

    def _protocol_violation(self, reason: str) -> None:
        self._send(pb.ClientMessage(error=pb.Error(code=pb.ILLEGAL_MESSAGE, message=reason)))
        raise ServerRefusedError(f"protocol error from the server: {reason}")


def _decodable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Return the model's own tensors if chunks can be written into them in place."""
    if all(t.device.type == "cpu" and t.is_contiguous() for t in state.values()):
        return state
    return None


def _load_if_copied(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
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
