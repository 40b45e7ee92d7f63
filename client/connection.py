"""Where the client connects and how: address, identity and credentials, from flags or bundle.

With a bundle from ``fl-certs`` the channel is mutual TLS: the client shows its certificate and
checks the server's against the federation CA, under the server name written in the bundle
(so ``--server`` may point at any address of that server). Without one, ``--insecure`` is
required and the channel is plaintext.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc

from fedsilo.client.config import ClientConfig
from fedsilo.common.bundles import load_client_bundle
from fedsilo.common.errors import SessionLostError
from fedsilo.common.wire import MAX_CHUNK_SIZE, channel_options

# Reconnect backoff of the channel while it waits for the server (grpc's own, with jitter).
_BACKOFF_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open a channel to the job and say who we are."""

    address: str
    name: str
    job_id: int | None
    credentials: grpc.ChannelCredentials | None
    target_name: str | None  # the name the server's certificate is checked against


def resolve_endpoint(config: ClientConfig) -> Endpoint:
    """Combine flags with the bundle (flags win) into an Endpoint; raise ConfigError if bad."""
    if config.bundle is None:
        assert config.server is not None  # the config model guarantees it
        return Endpoint(
            address=config.server,
            name=config.name or socket.gethostname(),
            job_id=config.job_id,
            credentials=None,
            target_name=None,
        )
    bundle = load_client_bundle(config.bundle)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.root_certificates,
        private_key=bundle.private_key,
        certificate_chain=bundle.certificate_chain,
    )
    return Endpoint(
        address=config.server or bundle.server,
        name=config.name or bundle.name,
        job_id=config.job_id if config.job_id is not None else bundle.job_id,
        credentials=credentials,
        target_name=bundle.server_name,
    )


def connect(endpoint: Endpoint, timeout: float) -> grpc.Channel:
    """Open a channel and wait (grpc retries with backoff) until it is ready."""
    options: list[tuple[str, int | str]] = [
        *channel_options(MAX_CHUNK_SIZE),  # the job's chunk size comes later, in InitConfig
        *_BACKOFF_OPTIONS,
    ]
    if endpoint.credentials is None:
        channel = grpc.insecure_channel(endpoint.address, options=options)
    else:
        if endpoint.target_name:
            options.append(("grpc.ssl_target_name_override", endpoint.target_name))
        channel = grpc.secure_channel(endpoint.address, endpoint.credentials, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as exc:
        channel.close()
        raise SessionLostError(
            "cannot reach it (or the TLS handshake fails); is fl-server running there, "
            "on that job's port, with certificates of the same federation?"
        ) from exc
    return channel
