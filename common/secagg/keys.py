"""Round keys: what binds them to a round, how they are signed and checked, what they derive.

A client's two X25519 public keys are signed with its mTLS certificate's EC P-256 key over a
domain-separated encoding of: the round digest (job id, round, the server's attempt nonce, the
participants, the vector length and the digest of the job's settings), the client's id and
name, both keys and its self-mask commitment. A signature therefore cannot be replayed into
another job, round, attempt or settings, nor claimed by another id. A peer checks the
certificate against the federation CA (chain, validity, clientAuth) and that its CN is the
claimed name, then the signature: a server cannot substitute keys without a CA-issued key.

From an X25519 agreement, HKDF-SHA256 (salt: the round digest) derives the pairwise mask seed
(info names both ids, lower first) and, separately per direction, the AES-256-GCM key of the
shares one client sends another.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from fedsilo.common.bundles import ClientBundle
from fedsilo.common.errors import ConfigError, SecAggRefusedError
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.messages import ATTEMPT_BYTES, KEY_BYTES, KeyAdvert, RoundSetup

TAG = b"fedsilo-secagg-v1"


@dataclass(frozen=True)
class Identity:
    """A client's name and the certificate key it signs its round keys with."""

    name: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: bytes  # PEM chain, leaf first, as fl-certs writes client.pem

    @classmethod
    def from_bundle(cls, bundle: ClientBundle) -> Identity:
        """Take the identity of a client bundle (its key and certificate)."""
        key = serialization.load_pem_private_key(bundle.private_key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("secure aggregation signs with an EC key; the bundle's is not")
        return cls(bundle.name, key, bundle.certificate_chain)


@dataclass(frozen=True)
class Trust:
    """The federation CA that peers' certificates must chain to."""

    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, pem: bytes) -> Trust:
        """Trust the CA certificates in ``pem`` (a bundle's ca.pem)."""
        return cls(tuple(x509.load_pem_x509_certificates(pem)))


def round_digest(setup: RoundSetup, config: SecAggConfig) -> bytes:
    """Return the digest of everything a round's keys are for."""
    if len(setup.attempt) != ATTEMPT_BYTES:
        raise SecAggRefusedError(f"attempt nonce of {len(setup.attempt)} bytes, not 16")
    ids = sorted(setup.participants)
    numbers = [setup.job_id, setup.round, setup.length, *ids]
    if len(set(ids)) != len(ids) or not all(0 <= number < 1 << 64 for number in numbers):
        raise SecAggRefusedError("a round setup with repeated ids or numbers out of range")
    data = b"".join(
        [
            TAG + b" round",
            struct.pack(">QQQ", setup.job_id, setup.round, setup.length),
            setup.attempt,
            struct.pack(f">Q{len(ids)}Q", len(ids), *ids),
            config.digest(),
        ]
    )
    return hashlib.sha256(data).digest()


def advert_payload(advert: KeyAdvert) -> bytes:
    """Return the bytes a client signs: every field of its advert but the signature itself."""
    name = advert.name.encode()
    return b"".join(
        [
            TAG + b" advertise",
            advert.round_digest,
            struct.pack(">QH", advert.client_id, len(name)),
            name,
            advert.cipher_key,
            advert.mask_key,
            advert.self_mask_commitment,
        ]
    )


def sign(identity: Identity, payload: bytes) -> bytes:
    """Sign ``payload`` with the identity's certificate key (ECDSA, SHA-256)."""
    return identity.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))


def check_advert(advert: KeyAdvert, digest: bytes, trust: Trust | None) -> None:
    """Refuse an advert for another round, with malformed keys, or (with ``trust``) not signed."""
    who = f"client {advert.client_id} ({advert.name!r})"
    if advert.round_digest != digest:
        raise SecAggRefusedError(
            f"{who} advertised keys for another job, round, attempt or settings"
        )
    for key in (advert.cipher_key, advert.mask_key, advert.self_mask_commitment):
        if len(key) != KEY_BYTES:
            raise SecAggRefusedError(f"{who} advertised a key of {len(key)} bytes, not 32")
    if trust is None:
        return
    if not advert.signature or not advert.certificate:
        raise SecAggRefusedError(f"{who} advertised unsigned keys; this job requires signed keys")
    leaf = _verified_leaf(advert.certificate, trust, who)
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    if common_name != advert.name:
        raise SecAggRefusedError(
            f"{who} signed its keys with the certificate of {common_name!r}, not its own"
        )
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SecAggRefusedError(f"{who}'s certificate does not hold an EC key")
    try:
        public_key.verify(advert.signature, advert_payload(advert), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SecAggRefusedError(
            f"{who}'s keys do not match its signature: substituted or altered on the way"
        ) from exc


def _verified_leaf(chain_pem: bytes, trust: Trust, who: str) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise SecAggRefusedError(f"{who} sent no readable certificate") from exc
    # fl-certs' client certificates carry no subjectAltName (the CN is the name), so the
    # WebPKI leaf policy is relaxed for that one extension; chain, validity and EKU still hold.
    leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(list(trust.roots)))
        .time(datetime.datetime.now(datetime.timezone.utc))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise SecAggRefusedError(
            f"{who}'s certificate is not a valid client certificate of this federation: {exc}"
        ) from exc
    return chain[0]


def agree(private_key: X25519PrivateKey, public_key: bytes, who: str) -> bytes:
    """Return the X25519 shared secret with a peer's raw public key; refuse a degenerate one."""
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as exc:  # a low-order point gives the all-zero secret, which is refused
        raise SecAggRefusedError(f"{who}'s public key gives no shared secret") from exc


def _hkdf(shared: bytes, digest: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=digest, info=TAG + info).derive(shared)


def pair_seed(shared: bytes, digest: bytes, a: int, b: int) -> bytes:
    """Return the 32-byte pairwise mask seed of clients ``a`` and ``b`` (order-free)."""
    low, high = sorted((a, b))
    return _hkdf(shared, digest, b" pair-mask" + struct.pack(">QQ", low, high))


def self_mask_seed(seed: bytes, digest: bytes) -> bytes:
    """Return the seed of a client's self-mask: its secret seed bound to the round's digest."""
    return _hkdf(seed, digest, b" self-mask")


def share_key(shared: bytes, digest: bytes, sender: int, recipient: int) -> bytes:
    """Return the AES-256-GCM key for the shares ``sender`` encrypts to ``recipient``."""
    return _hkdf(shared, digest, b" share-key" + struct.pack(">QQ", sender, recipient))


def share_aad(digest: bytes, sender: int, recipient: int) -> bytes:
    """Return the associated data binding an encrypted share to its round and both ends."""
    return TAG + b" share" + digest + struct.pack(">QQ", sender, recipient)


def graph_seed(digest: bytes) -> bytes:
    """Return the public seed of the round's neighbour graph."""
    return hashlib.sha256(TAG + b" graph" + digest).digest()


def commitment(digest: bytes, client: int, seed: bytes) -> bytes:
    """Return the commitment to a client's self-mask seed that its signed advert carries."""
    return hashlib.sha256(TAG + b" self-mask" + digest + struct.pack(">Q", client) + seed).digest()


def private_key_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32 raw bytes of an X25519 private key (what is Shamir-shared)."""
    return key.private_bytes_raw()


def public_key_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32 raw bytes of an X25519 key's public half."""
    return key.public_key().public_bytes_raw()
