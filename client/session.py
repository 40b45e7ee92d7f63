"""The fl-client daemon's transport: one gRPC stream per session, reconnecting after outages.

The client only dials out. One bidirectional stream carries the whole session; what the
protocol sends goes through an outbox that the stream's request iterator drains, so an upload
is framed lazily, one chunk at a time, straight from the model's own tensors. The protocol
itself (what to do with each message) is ``client/protocol.py``.

Bounds: a session that makes no progress either way for ``--idle-timeout`` seconds while the
client waits for the server is given up (``client/silence.py``); after a refusal the client
sends its Error, half-closes and waits at most ``CLOSE_GRACE`` seconds for the server to end
the stream. A task that raised (TaskFailedError, ``client/task_failure.py``) ends it the
same way, with one line (exit 3; its traceback is logged at debug level); ``--data`` and the
task are checked before the first connection (``client/preflight.py``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf.message import DecodeError

from fedsilo.client.audit import AuditLog
from fedsilo.client.config import ClientConfig
from fedsilo.client.connection import Endpoint, connect
from fedsilo.client.policy import policy_of
from fedsilo.client.preflight import check_data_folder, check_task
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.client.ranks import RankLauncher, RankSettings
from fedsilo.client.reconnect import Outage
from fedsilo.client.secagg_client import secagg_keys_of
from fedsilo.client.silence import SilenceWatch
from fedsilo.common.devices import resolve_device
from fedsilo.common.errors import (
    ConfigError,
    ConnectError,
    FedsiloError,
    LeftRoundError,
    LocalTrainingError,
    ProtocolError,
    SessionLostError,
    StopRequestedError,
    TaskFailedError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.text import one_line
from fedsilo.common.wire import (
    MAX_CHUNK_SIZE,
    MESSAGE_OVERHEAD_BYTES,
    SESSION_METHOD_PATH,
    Outbound,
    RawChunk,
    parse_server_message,
    serialize,
)

CLOSE_GRACE = 5.0  # seconds a refusing client waits for the server to end the stream


class _Close:
    """Marker that ends the request stream."""


_CLOSE = _Close()
OutboxItem = Outbound | Iterator[bytes] | _Close


class FederationClient:
    """Runs one organisation's client against one server until FINISH, ABORT or an error."""

    def __init__(
        self,
        config: ClientConfig,
        endpoint: Endpoint,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.log = log.bind(client=endpoint.name)
        policy = policy_of(config, config.bundle)  # the local task is resolved here, once
        check_data_folder(config.data)
        check_task(policy)
        run_dir = config.run_dir(endpoint.name)
        self.audit = AuditLog(run_dir / "audit.jsonl", endpoint.name)
        device = resolve_device(config.device)
        ranks = RankSettings.resolve(
            config.nproc_per_node, device, config.threads, config.log_level
        )
        if ranks is not None and policy.dp is not None:
            raise ConfigError(
                "nproc_per_node: record-level DP-SGD trains in the client's own process "
                "(Opacus per-sample gradients); give 1 with a record_dp_* policy"
            )
        local = LocalSettings(
            partition=config.partition,
            data=config.data,
            device=device,
            policy=policy,
            state_dir=run_dir,  # DP-SGD budgets and control variates, next to audit.jsonl
            secagg_keys=secagg_keys_of(config),
            ranks=RankLauncher(ranks, endpoint.name, config.data, self.log) if ranks else None,
        )
        self.protocol = ClientProtocol(endpoint.name, endpoint.job_id, local, log, self.audit)
        identity = policy.identity
        self.log.info(
            "client_policy",
            policy=policy.mode,
            task=identity.name if identity else None,
            task_hash=identity.hash if identity else None,
            record_dp=policy.dp.model_dump() if policy.dp else None,
            audit=str(self.audit.path),
        )

    def run(self) -> None:
        """Take part until the job finishes, reconnecting after a lost connection.

        An outage (from the moment a session breaks until the server sends InitConfig again)
        may last ``connect_timeout`` seconds; then ConnectError says why. Other FedsiloErrors
        report refusals and aborts.
        """
        outage = Outage(self.config.connect_timeout)
        try:
            while True:
                try:
                    self._session_once(outage)
                    return
                except SessionLostError as lost:
                    if self.protocol.joined_this_session:
                        outage = Outage(self.config.connect_timeout)
                    delay = outage.next_delay()
                    if delay is None:
                        raise ConnectError(
                            f"no session with the server at {self.endpoint.address} within "
                            f"{self.config.connect_timeout:g}s (--connect-timeout): {lost}"
                        ) from lost
                    event = "rejoining" if isinstance(lost, LeftRoundError) else "connection_lost"
                    self.log.warning(event, reason=str(lost), retry_in=round(delay, 2))
                    time.sleep(delay)
        finally:
            self.audit.close()

    def _session_once(self, outage: Outage) -> None:
        """Run one stream from Hello to Finish; raise SessionLostError if it breaks."""
        outbox: queue.SimpleQueue[OutboxItem] = queue.SimpleQueue()
        # Before connect: a connect that fails must not leave the last session's "joined"
        # standing, or run() would start a fresh outage budget at every attempt, forever.
        hello = self.protocol.start_session(outbox.put)
        channel = connect(self.endpoint, max(outage.remaining, 0.1), self.log)
        watch = SilenceWatch(self.config.idle_timeout)
        call = channel.stream_stream(
            SESSION_METHOD_PATH,
            request_serializer=serialize,
            response_deserializer=_parse_or_none,
        )(_requests(outbox, watch))
        watch.start(call.cancel)
        finished = False
        try:
            outbox.put(hello)
            watch.waiting()
            for message in call:
                watch.working()
                done = self._handle(message, call, outbox)
                if done:
                    # Half-close our side and read on until the server ends the stream, so
                    # that no grpc thread is still busy with this call when the process exits.
                    finished = True
                    outbox.put(_CLOSE)
                watch.waiting()
        except grpc.RpcError as exc:
            if watch.expired:
                raise ConnectError(
                    f"the server at {self.endpoint.address} made no progress for "
                    f"{self.config.idle_timeout:g}s (--idle-timeout); giving up"
                ) from exc
            if _oversized(exc):
                # Not an outage: the server broke the message cap. Reconnecting would only
                # bring the same message again (and a fresh outage budget with each join).
                raise ProtocolError(
                    int(pb.MALFORMED_MESSAGE),
                    f"the server broke the protocol: a message above this client's cap of "
                    f"{MAX_CHUNK_SIZE + MESSAGE_OVERHEAD_BYTES} bytes ({exc.details()})",
                ) from exc
            if not finished:
                raise SessionLostError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            watch.stop()
            outbox.put(_CLOSE)
            call.cancel()
            channel.close()
        if not finished:
            raise SessionLostError("the server closed the session early")

    def _handle(
        self,
        message: pb.ServerMessage | RawChunk | None,
        call: grpc.Call,
        outbox: queue.SimpleQueue[OutboxItem],
    ) -> bool:
        """Handle one message; after our own Error (refused, task failed, left a round), close."""
        try:
            return self.protocol.handle(message)
        except LocalTrainingError as failed:
            self._leave_round(failed, call, outbox)
        except (SessionLostError, StopRequestedError):
            raise
        except FedsiloError as exc:
            _close_after_refusal(call, outbox)
            if isinstance(exc, TaskFailedError):
                self._task_failed(exc)
            raise

    def _task_failed(self, failed: TaskFailedError) -> None:
        """Record the TASK_FAILED sent; the person gets one line, the traceback is at debug."""
        self.audit.record(
            "task_failed", True, **self._where(), code="TASK_FAILED", reason=str(failed)
        )
        self.log.error("task_failed", reason=str(failed))
        self.log.debug("task_failed_traceback", exc_info=failed)

    def _where(self) -> dict[str, Any]:
        """The job and client id of an audit line, once joined."""
        joined = self.protocol.joined
        return {"job_id": joined.job.job_id, "client_id": joined.client_id} if joined else {}

    def _leave_round(
        self,
        failed: LocalTrainingError,
        call: grpc.Call,
        outbox: queue.SimpleQueue[OutboxItem],
    ) -> NoReturn:
        """Tell the server the round's training failed here; end the session to rejoin.

        The server drops a member from its round when its stream ends; the client comes back
        at once (``run``) and is ready for the next round.
        """
        number = failed.round_number
        line = one_line(f"left round {number}: local training failed: {failed}")
        outbox.put(pb.ClientMessage(error=pb.Error(code=pb.INTERNAL, message=line)))
        where = self._where()
        self.audit.record("left_round", True, **where, round=number, reason=line)
        self.log.warning("left_round", **where, round=number, reason=line)
        _close_after_refusal(call, outbox)
        raise LeftRoundError(line) from failed


def _close_after_refusal(call: grpc.Call, outbox: queue.SimpleQueue[OutboxItem]) -> None:
    """Let the queued Error go out: half-close, then read until the server ends the stream."""
    outbox.put(_CLOSE)
    timer = threading.Timer(CLOSE_GRACE, call.cancel)
    timer.start()
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass
    finally:
        timer.cancel()


def _oversized(exc: grpc.RpcError) -> bool:
    """Whether the call failed because a received message exceeded the channel's cap."""
    details = exc.details() or ""
    return exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details


def _parse_or_none(raw: bytes) -> pb.ServerMessage | RawChunk | None:
    """Parse a server message; None for bytes that do not parse (answered MALFORMED_MESSAGE)."""
    try:
        return parse_server_message(raw)
    except DecodeError:
        return None


def _requests(outbox: queue.SimpleQueue[OutboxItem], watch: SilenceWatch) -> Iterator[Outbound]:
    while True:
        item = outbox.get()
        if isinstance(item, _Close):
            return
        frames: Iterator[Outbound] = item if isinstance(item, Iterator) else iter([item])
        for frame in frames:
            yield frame
            watch.progress()  # the transport took the frame
