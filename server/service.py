"""The gRPC side of the server: the Session method, reading and writing one client's stream.

Reads like the .proto: each stream gets a ClientSession; a reader thread feeds it the client's
messages; this handler's generator sends whatever the session queues, until it is closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import (
    CLIENT_CHUNKS,
    SERVICE_NAME,
    SESSION_METHOD_NAME,
    Inbound,
    Outbound,
    serialize,
    tolerant_deserializer,
)
from fedsilo.server.job import Job
from fedsilo.server.outbox import CLOSE, OutgoingModel
from fedsilo.server.session import ClientSession


class FederationService:
    """Serves the Session stream of every client of one job."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def session(
        self, requests: Iterator[Inbound[pb.ClientMessage]], context: grpc.ServicerContext
    ) -> Iterator[Outbound]:
        """Run one client's stream: read in a thread, write what the session queues."""
        session = self.job.open_session(context.peer(), context.cancel, certificate_name(context))
        context.add_callback(session.close)
        reader = threading.Thread(
            target=_read_stream,
            args=(session, requests),
            name=f"read-{context.peer()}",
            daemon=True,
        )
        reader.start()
        try:
            while True:
                item = session.outbox.get()
                if item is CLOSE:
                    return
                if isinstance(item, OutgoingModel):
                    for frame in item:
                        yield frame
                        session.touch()
                    session.model_sent()
                else:
                    yield item  # type: ignore[misc]
                    session.touch()
        finally:
            session.stream_ended()

    def handler(self) -> grpc.GenericRpcHandler:
        """Return the generic handler registering Session with fedsilo's (de)serializers."""
        method = grpc.stream_stream_rpc_method_handler(
            self.session,
            request_deserializer=tolerant_deserializer(pb.ClientMessage, CLIENT_CHUNKS),
            response_serializer=serialize,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {SESSION_METHOD_NAME: method})


def _read_stream(session: ClientSession, requests: Iterator[Inbound[pb.ClientMessage]]) -> None:
    try:
        for inbound in requests:
            session.handle(inbound)
    except grpc.RpcError:
        pass  # the stream was cancelled or cut: handled as a disconnect below
    finally:
        session.disconnect()


def certificate_name(context: grpc.ServicerContext) -> str | None:
    """Return the CN of the peer's verified TLS certificate, or None on a plaintext channel."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", errors="replace") if names else None
