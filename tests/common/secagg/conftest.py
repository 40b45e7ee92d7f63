"""Fixtures: a federation CA with client certificates issued by fl-certs' own functions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.common.secagg import Identity, Trust
from fedsilo.provision import certs


@dataclass(frozen=True)
class Federation:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    trust: Trust
    identities: dict[int, Identity]

    def issue(self, name: str, days: int = 30) -> Identity:
        key, cert = certs.make_client_cert(self.ca_key, self.ca_cert, name, days)
        return Identity(name, key, certs.certificate_pem(cert))


@pytest.fixture(scope="session")
def federation() -> Federation:
    ca_key, ca_cert = certs.make_ca(days=30)
    identities = {}
    for client in range(10):
        key, cert = certs.make_client_cert(ca_key, ca_cert, f"org-{client}", 30)
        identities[client] = Identity(f"org-{client}", key, certs.certificate_pem(cert))
    return Federation(ca_key, ca_cert, Trust((ca_cert,)), identities)
