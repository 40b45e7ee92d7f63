"""The classification of gRPC's connection reasons: what grpcio said in the integration runs."""

from __future__ import annotations

import pytest

from fedsilo.client.connect_errors import Failure, classify

LAST = "UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
HANDSHAKE = LAST + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:"


@pytest.mark.parametrize(
    ("reason", "tls", "failure"),
    [
        (LAST + "Failed to connect to remote host: Connection refused", False, Failure.REFUSED),
        (LAST + "Failed to connect to remote host: Connection refused", True, Failure.REFUSED),
        (
            HANDSHAKE + "100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER",
            True,
            Failure.PLAINTEXT_SERVER,
        ),
        (
            HANDSHAKE + "1000042e:SSL routines:OPENSSL_internal:TLSV1_ALERT_PROTOCOL_VERSION",
            True,
            Failure.TLS_VERSION,
        ),
        (
            HANDSHAKE + "1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable "
            "to get local issuer certificate",
            True,
            Failure.UNKNOWN_CA,
        ),
        (
            HANDSHAKE + "CERTIFICATE_VERIFY_FAILED: certificate has expired",
            True,
            Failure.SERVER_CERT_EXPIRED,
        ),
        (
            LAST + "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
            "Verification Check failed.",
            True,
            Failure.NAME_MISMATCH,
        ),
        (
            LAST + "connection attempt timed out before receiving SETTINGS frame",
            False,
            Failure.TIMEOUT,
        ),
        (
            "UNAVAILABLE: ... last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
            False,
            Failure.CLOSED,
        ),
        (
            "UNAVAILABLE: ... last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
            True,
            Failure.CLOSED,
        ),
        ("UNAVAILABLE: something grpc never said before", True, Failure.OTHER),
    ],
)
def test_each_reason_grpc_gives_is_named(reason: str, tls: bool, failure: Failure) -> None:
    found = classify(reason, tls, "localhost")
    assert found.failure is failure
    assert found.line().endswith(f"(gRPC: {reason})")


def test_a_tls_pattern_on_a_plaintext_channel_is_not_taken_for_a_tls_failure() -> None:
    reason = HANDSHAKE + "WRONG_VERSION_NUMBER"
    assert classify(reason, tls=False).failure is Failure.OTHER


def test_only_failures_retrying_cannot_fix_are_final() -> None:
    assert classify(HANDSHAKE + "CERTIFICATE_VERIFY_FAILED", True).final
    assert not classify(LAST + "Connection refused", True).final
    assert not classify(LAST + "Socket closed", True).final


def test_the_name_checked_is_in_the_line() -> None:
    found = classify(LAST + "Hostname Verification Check failed.", True, "fl.example.org")
    assert "does not name 'fl.example.org'" in found.line()
