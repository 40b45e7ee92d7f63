"""The cryptography of fl-certs: EC P-256 keys, a federation CA and the certificates it signs.

Every function here is pure except the ``write_*`` helpers, which create files exclusively
(``O_EXCL``) so that nothing is ever overwritten and a private key is never readable by others,
not even for a moment between creating and chmod-ing it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "fedsilo federation CA"
# Clocks of the machines in a federation disagree a little; a certificate valid from "now" would
# be refused for a few minutes by a peer whose clock runs behind.
CLOCK_SKEW = datetime.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    """Generate an EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(
        now + datetime.timedelta(days=days)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed federation CA: its key and certificate (CA:TRUE, keyCertSign)."""
    key = new_key()
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_COMMON_NAME))
        .issuer_name(_name(CA_COMMON_NAME))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return key, _validity(builder, days).sign(key, hashes.SHA256())


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    usage: x509.ObjectIdentifier,
    days: int,
    names: Sequence[x509.GeneralName] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, _validity(builder, days).sign(ca_key, hashes.SHA256())


def subject_alternative_name(name: str) -> x509.GeneralName:
    """Return an IPAddress SAN for an IP literal, else a DNSName SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_names: Sequence[str],
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue the server's key and certificate: CN the first name, a SAN for every name."""
    sans = [subject_alternative_name(name) for name in server_names]
    return _leaf(
        ca_key,
        ca_cert,
        server_names[0],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
        names=sans,
    )


def make_client_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, org: str, days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue an organisation's client key and certificate: CN the org name, EKU clientAuth."""
    return _leaf(ca_key, ca_cert, org, usage=ExtendedKeyUsageOID.CLIENT_AUTH, days=days)


def certificate_pem(cert: x509.Certificate) -> bytes:
    """Encode a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_ca(cert_pem: bytes, key_pem: bytes) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Parse a CA certificate and its key; raise ValueError if they are not a P-256 pair."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the CA key is not an EC P-256 key")
    if key.public_key() != cert.public_key():
        raise ValueError("the CA key does not belong to the CA certificate")
    return key, cert


def make_private_folder(path: Path) -> None:
    """Create a folder only its owner can enter (0700); fail if it exists."""
    path.mkdir(mode=0o700)
    # mkdir's mode is filtered by the umask; chmod makes it exactly 0700 whatever the umask.
    path.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; fail if it exists."""
    _write_exclusive(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0644 (less what the umask removes); fail if it exists."""
    _write_exclusive(path, data, 0o644)


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
