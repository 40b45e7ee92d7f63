"""Why a connection to the server failed, from gRPC's own words: one table, pattern -> message.

When a channel goes to TRANSIENT_FAILURE, a call made on it without ``wait_for_ready`` fails at
once with UNAVAILABLE, and its details end in the last error of the connection attempt. What
grpcio 1.85 (BoringSSL) says, measured against fl-server --tls with fl-certs bundles, plaintext
gRPC servers, a TLS-1.1-only listener and plain socket listeners:

    nothing listens         ... Failed to connect to remote host: Connection refused
    TLS client, plaintext   ... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL:
      server                    error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER
    plaintext client,       ... Socket closed   (as for any peer that hangs up: ``connection.py``
      TLS server                                 confirms it by sending a TLS ClientHello)
    TLS 1.1-only server     ... TLSV1_ALERT_PROTOCOL_VERSION
    server of another CA    ... CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate
    name not in its cert    ... Custom verification check failed with error: UNAUTHENTICATED:
                                Hostname Verification Check failed.
    accepts, never answers  ... connection attempt timed out before receiving SETTINGS frame
                                (plaintext); Handshake read failed (Endpoint closing) (TLS)
    our certificate refused ... Socket closed   (the server sends no alert: expired, another CA)
    unknown host name       errors resolving HOST:PORT: [... Domain name not found]

A failure in ``FINAL`` cannot be fixed by trying again (the certificates or the transport are
wrong), so the client stops at once; the others (nothing listening yet, no answer, a server
that hangs up) are retried until ``--connect-timeout``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal


class Failure(Enum):
    """What went wrong with a connection attempt."""

    REFUSED = "refused"
    PLAINTEXT_SERVER = "plaintext_server"  # a TLS client, a server without TLS
    TLS_SERVER = "tls_server"  # a plaintext client, a TLS server (found by a probe)
    TLS_VERSION = "tls_version"
    UNKNOWN_CA = "unknown_ca"
    SERVER_CERT_EXPIRED = "server_cert_expired"
    CLIENT_CERT_EXPIRED = "client_cert_expired"  # found by reading the client's own certificate
    NAME_MISMATCH = "name_mismatch"
    TIMEOUT = "timeout"
    CLOSED = "closed"
    UNRESOLVED = "unresolved"
    OTHER = "other"


FINAL = frozenset(
    {
        Failure.PLAINTEXT_SERVER,
        Failure.TLS_SERVER,
        Failure.TLS_VERSION,
        Failure.UNKNOWN_CA,
        Failure.SERVER_CERT_EXPIRED,
        Failure.CLIENT_CERT_EXPIRED,
        Failure.NAME_MISMATCH,
    }
)

Transport = Literal["tls", "plaintext", "any"]


@dataclass(frozen=True)
class Rule:
    """Details matching ``pattern`` (on a channel of ``transport``) mean ``failure``."""

    pattern: str
    failure: Failure
    message: str
    transport: Transport = "any"

    def matches(self, details: str, tls: bool) -> bool:
        """Whether this rule explains ``details`` on a TLS (or plaintext) channel."""
        if self.transport != "any" and (self.transport == "tls") != tls:
            return False
        return re.search(self.pattern, details) is not None


# First match wins. ``{target}`` is the server name the client checks the certificate against.
RULES: tuple[Rule, ...] = (
    Rule(
        r"Connection refused",
        Failure.REFUSED,
        "nothing listens there (connection refused): is fl-server running, on this job's "
        "port (port base + job id)?",
    ),
    Rule(
        r"WRONG_VERSION_NUMBER",
        Failure.PLAINTEXT_SERVER,
        "the server does not speak TLS (an fl-server without --tls, or not fl-server at all) "
        "and this client uses TLS (--bundle)",
        "tls",
    ),
    Rule(
        r"ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|NO_SUPPORTED_VERSIONS|VERSION_TOO_LOW",
        Failure.TLS_VERSION,
        "no TLS version in common with the server: this client speaks TLS 1.2 and 1.3 "
        "(an old TLS proxy or load balancer in front of the server?)",
        "tls",
    ),
    Rule(
        r"CERTIFICATE_VERIFY_FAILED: certificate has expired",
        Failure.SERVER_CERT_EXPIRED,
        "the server's certificate has expired: its operator must issue a new one (fl-certs)",
        "tls",
    ),
    Rule(
        r"CERTIFICATE_VERIFY_FAILED",
        Failure.UNKNOWN_CA,
        "the server's certificate is not signed by this bundle's CA (ca.pem): a server of "
        "another federation, or a bundle from another `fl-certs init`",
        "tls",
    ),
    Rule(
        r"Hostname Verification Check failed|Peer name .* is not in peer certificate"
        r"|No match found for server name",
        Failure.NAME_MISMATCH,
        "the server's certificate does not name {target}, the server name this client "
        "checks (the bundle's connection.json, server_name)",
        "tls",
    ),
    Rule(
        r"timed out before receiving SETTINGS|Handshake read failed \(Endpoint closing\)"
        r"|Deadline Exceeded|Connection timed out",
        Failure.TIMEOUT,
        "no answer: the connection was accepted but the handshake never completed (not a "
        "gRPC server, a stalled one, or a proxy that holds connections)",
    ),
    Rule(
        r"Socket closed|Connection reset by peer|Broken pipe|Endpoint closing",
        Failure.CLOSED,
        "the server hung up during the TLS handshake: it does not accept this client's "
        "certificate (of another federation, or no longer valid), or it is shutting down",
        "tls",
    ),
    Rule(
        r"Socket closed|Connection reset by peer|Broken pipe|Endpoint closing",
        Failure.CLOSED,
        "the server hung up before the HTTP/2 handshake: not a gRPC server, or one that is "
        "shutting down",
        "plaintext",
    ),
    Rule(
        r"errors resolving|DNS resolution failed|Domain name not found|hostname lookup error",
        Failure.UNRESOLVED,
        "the server's host name does not resolve",
    ),
)

# Failures that no pattern tells: the client confirms them itself (``client/connection.py``).
TLS_SERVER_MESSAGE = (
    "the server speaks TLS and this client is plaintext (--insecure): give it its bundle "
    "from fl-certs (--bundle DIR)"
)
CLIENT_CERT_EXPIRED_MESSAGE = (
    "this client's certificate (client.pem) expired on {expired}: ask the federation "
    "operator for a new bundle (fl-certs add-org)"
)
SILENT = "no answer: the connection attempt never completed (a firewall dropping packets?)"
OTHER = "the connection failed"


@dataclass(frozen=True)
class Diagnosis:
    """One connection failure: what it is, for a person, and what gRPC said."""

    failure: Failure
    message: str
    grpc_reason: str  # e.g. "UNAVAILABLE: failed to connect to all addresses; last error: ..."

    @property
    def final(self) -> bool:
        """Whether trying again cannot help (so the client stops at once)."""
        return self.failure in FINAL

    def line(self) -> str:
        """The failure in one line, gRPC's own reason appended (when it gave one)."""
        return f"{self.message} (gRPC: {self.grpc_reason})" if self.grpc_reason else self.message


def classify(grpc_reason: str, tls: bool, target: str | None = None) -> Diagnosis:
    """Return what a failed attempt's gRPC reason means on a TLS (or plaintext) channel."""
    for rule in RULES:
        if rule.matches(grpc_reason, tls):
            message = rule.message.format(target=repr(target) if target else "the server's name")
            return Diagnosis(rule.failure, message, grpc_reason)
    return Diagnosis(Failure.OTHER, OTHER, grpc_reason)
