"""The fl-client daemon's transport: one gRPC stream per session, reconnecting after outages.

The client only dials out. One bidirectional stream carries the whole session; what the
protocol sends goes through an outbox that the stream's request iterator drains, so an upload
is framed lazily, one chunk at a time, straight from the model's own tensors. The protocol
itself (what to do with each message) is ``client/protocol.py``.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import grpc
import structlog

from fedsilo.client.config import ClientConfig
from fedsilo.client.connection import Endpoint, connect
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.client.reconnect import Outage
from fedsilo.common.devices import resolve_device
from fedsilo.common.errors import ConnectError, SessionLostError
from fedsilo.common.wire import SESSION_METHOD_PATH, Outbound, parse_server_message, serialize


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
        local = LocalSettings(
            partition=config.partition, data=config.data, device=resolve_device(config.device)
        )
        self.protocol = ClientProtocol(endpoint.name, endpoint.job_id, local, log)

    def run(self) -> None:
        """Take part until the job finishes, reconnecting after a lost connection.

        An outage (from the moment a session breaks until the server sends InitConfig again)
        may last ``connect_timeout`` seconds; then ConnectError says why. Other FedsiloErrors
        report refusals and aborts.
        """
        outage = Outage(self.config.connect_timeout)
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
                self.log.warning("connection_lost", reason=str(lost), retry_in=round(delay, 2))
                time.sleep(delay)

    def _session_once(self, outage: Outage) -> None:
        """Run one stream from Hello to Finish; raise SessionLostError if it breaks."""
        outbox: queue.SimpleQueue[OutboxItem] = queue.SimpleQueue()
        channel = connect(self.endpoint, max(outage.remaining, 0.1))
        call = channel.stream_stream(
            SESSION_METHOD_PATH,
            request_serializer=serialize,
            response_deserializer=parse_server_message,
        )(_requests(outbox))
        finished = False
        try:
            outbox.put(self.protocol.start_session(outbox.put))
            for message in call:
                if self.protocol.handle(message):
                    # Half-close our side and read on until the server ends the stream, so
                    # that no grpc thread is still busy with this call when the process exits.
                    finished = True
                    outbox.put(_CLOSE)
        except grpc.RpcError as exc:
            if not finished:
                raise SessionLostError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            outbox.put(_CLOSE)
            call.cancel()
            channel.close()
        if not finished:
            raise SessionLostError("the server closed the session early")


def _requests(outbox: queue.SimpleQueue[OutboxItem]) -> Iterator[Outbound]:
    while True:
        item = outbox.get()
        if isinstance(item, _Close):
            return
        if isinstance(item, Iterator):
            yield from item
        else:
            yield item
