"""Where the client connects and how: address, identity and credentials, from flags or bundle.

With a bundle from ``fl-certs`` the channel is mutual TLS: the client shows its certificate and
checks the server's against the federation CA, under the server name written in the bundle
(so ``--server`` may point at any address of that server). Without one, ``--insecure`` is
required and the channel is plaintext.

``connect`` waits for the channel and says why it cannot open one: each failed attempt's gRPC
reason is classified by ``client/connect_errors.py``; a peer that only hangs up is looked at
twice more (has this client's certificate expired? does a plaintext client meet a TLS server?).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import grpc
import structlog
from cryptography import x509

from fedsilo.client.config import ClientConfig
from fedsilo.client.connect_errors import (
    CLIENT_CERT_EXPIRED_MESSAGE,
    SILENT,
    TLS_SERVER_MESSAGE,
    Diagnosis,
    Failure,
    classify,
)
from fedsilo.common.bundles import load_client_bundle
from fedsilo.common.errors import ConnectError, SessionLostError
from fedsilo.common.wire import MAX_CHUNK_SIZE, channel_options

# Reconnect backoff of the channel while it waits for the server (grpc's own, with jitter).
_BACKOFF_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]
PROBE_METHOD = "/fedsilo.v1.Federation/ConnectProbe"  # no such method (see _last_error)
PROBE_SECONDS = 5.0  # at most this long to learn why an attempt failed
RECHECK_SECONDS = 1.0  # how often the reason of a channel still failing is read again
READY = grpc.ChannelConnectivity.READY
TLS_HANDSHAKE_RECORD, TLS_MAJOR = 0x16, 0x03  # the first two bytes of a TLS server's answer


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open a channel to the job and say who we are."""

    address: str
    name: str
    job_id: int | None
    credentials: grpc.ChannelCredentials | None
    target_name: str | None  # the name the server's certificate is checked against
    certificate_chain: bytes | None = None  # this client's own, to tell when it has expired


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
        certificate_chain=bundle.certificate_chain,
    )


def connect(
    endpoint: Endpoint, timeout: float, log: structlog.typing.FilteringBoundLogger | None = None
) -> grpc.Channel:
    """Open a channel and wait (grpc retries with backoff) until it is ready.

    Every failed attempt is classified (``client/connect_errors.py``). One that retrying cannot
    fix (TLS against plaintext, a foreign CA, a name mismatch, ...) raises ConnectError at once;
    otherwise SessionLostError says what the last attempt met once ``timeout`` is over, and
    ``log`` hears of each new reason as soon as it is known (``connect_failing``).
    """
    channel = _open(endpoint)
    watch = _Connectivity(channel)
    deadline = time.monotonic() + timeout
    last: Diagnosis | None = None
    try:
        # A channel stays in TRANSIENT_FAILURE while grpc retries in the background, so its
        # last error is looked at again every RECHECK_SECONDS (what fails may change).
        while watch.next(min(deadline, time.monotonic() + RECHECK_SECONDS)) is not READY:
            if time.monotonic() >= deadline:
                raise SessionLostError((last or Diagnosis(Failure.TIMEOUT, SILENT, "")).line())
            if watch.current is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                last = _newest(_diagnose(channel, endpoint, deadline), last, log)
                if last is not None and last.final:
                    raise ConnectError(
                        f"no session with the server at {endpoint.address}: {last.line()}"
                    )
    except BaseException:
        watch.stop()
        channel.close()
        raise
    watch.stop()
    return channel


def _newest(
    found: Diagnosis | None,
    last: Diagnosis | None,
    log: structlog.typing.FilteringBoundLogger | None,
) -> Diagnosis | None:
    """Return the newest known reason; log it when it is new (a person sees it before the end)."""
    if found is None:
        return last
    if log is not None and (last is None or found.failure is not last.failure):
        log.warning("connect_failing", failure=found.failure.value, reason=found.line())
    return found


def _open(endpoint: Endpoint) -> grpc.Channel:
    options: list[tuple[str, int | str]] = [
        *channel_options(MAX_CHUNK_SIZE),  # the job's chunk size comes later, in InitConfig
        *_BACKOFF_OPTIONS,
    ]
    if endpoint.credentials is None:
        return grpc.insecure_channel(endpoint.address, options=options)
    if endpoint.target_name:
        options.append(("grpc.ssl_target_name_override", endpoint.target_name))
    return grpc.secure_channel(endpoint.address, endpoint.credentials, options=options)


class _Connectivity:
    """The channel's connectivity states, in order, as grpc reports them from its own thread."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._cond = threading.Condition()
        self._states: list[grpc.ChannelConnectivity] = []
        self._seen = 0
        channel.subscribe(self._changed, try_to_connect=True)

    def _changed(self, state: grpc.ChannelConnectivity) -> None:
        with self._cond:
            self._states.append(state)
            self._cond.notify_all()

    def next(self, until: float) -> grpc.ChannelConnectivity | None:
        """Return the next state not yet returned; None if none came by ``until`` (monotonic)."""
        with self._cond:
            arrived = self._cond.wait_for(
                lambda: len(self._states) > self._seen, timeout=max(0.0, until - time.monotonic())
            )
            if not arrived:
                return None
            self._seen += 1
            return self._states[self._seen - 1]

    @property
    def current(self) -> grpc.ChannelConnectivity | None:
        """The last state returned by ``next``."""
        with self._cond:
            return self._states[self._seen - 1] if self._seen else None

    def stop(self) -> None:
        """Stop listening to the channel."""
        self._channel.unsubscribe(self._changed)


def _diagnose(channel: grpc.Channel, endpoint: Endpoint, deadline: float) -> Diagnosis | None:
    """Classify the failure of the channel's last attempt (None: it did not say)."""
    reason = _last_error(channel, deadline)
    if reason is None:
        return None
    tls = endpoint.credentials is not None
    found = classify(reason, tls, endpoint.target_name)
    if found.failure is not Failure.CLOSED:
        return found
    # A peer that hangs up says nothing more; two causes are certain, and checked here.
    expired = _expired_on(endpoint.certificate_chain) if tls else None
    if expired is not None:
        message = CLIENT_CERT_EXPIRED_MESSAGE.format(expired=expired)
        return Diagnosis(Failure.CLIENT_CERT_EXPIRED, message, reason)
    if not tls and speaks_tls(endpoint.address, min(PROBE_SECONDS, _left(deadline))):
        return Diagnosis(Failure.TLS_SERVER, TLS_SERVER_MESSAGE, reason)
    return found


def _last_error(channel: grpc.Channel, deadline: float) -> str | None:
    """gRPC's reason for the last failed attempt: a call without wait_for_ready fails with it.

    The method does not exist: should the channel be ready by now, the server only answers
    UNIMPLEMENTED (and nothing is opened on the job).
    """
    probe = channel.unary_unary(PROBE_METHOD)
    try:
        probe(b"", timeout=min(PROBE_SECONDS, _left(deadline)), wait_for_ready=False)
    except grpc.RpcError as exc:
        code = exc.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            return f"{code.name}: {exc.details()}"
    return None


def speaks_tls(address: str, timeout: float) -> bool:
    """Whether the server at ``address`` answers a TLS ClientHello with a TLS handshake record.

    Only the first bytes of the answer are read: nothing is verified, trusted or sent beyond
    the hello (the handshake is never completed).
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    outgoing = ssl.MemoryBIO()
    hello_side = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname=host
    )
    with contextlib.suppress(ssl.SSLWantReadError):  # the hello is written, the answer awaited
        hello_side.do_handshake()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(outgoing.read())
            answer = sock.recv(2)
    except OSError:
        return False
    return len(answer) == 2 and answer[0] == TLS_HANDSHAKE_RECORD and answer[1] == TLS_MAJOR


def _expired_on(certificate_chain: bytes | None) -> str | None:
    """The date this client's certificate expired on, or None while it is valid."""
    if certificate_chain is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(certificate_chain)
    except ValueError:
        return None
    expires = certificate.not_valid_after_utc
    return expires.isoformat(timespec="seconds") if expires <= datetime.now(timezone.utc) else None


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())
