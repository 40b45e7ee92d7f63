"""Secure aggregation's messages on the wire: protobuf <-> the dataclasses of ``messages.py``.

One function each way per message, nothing else: both daemons call these at their boundary, so
the protocol logic (``client.py``, ``server.py``) never sees protobuf. Sizes are checked where
the dataclasses' users check them (keys, digests, nonces, ciphertexts: ``keys.py``).
"""

from __future__ import annotations

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.messages import (
    EncryptedShare,
    KeyAdvert,
    KeyRoster,
    KeyShares,
    RoundSetup,
    RoutedShares,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsilo.common.secagg.plan import ThreatModel


def settings_message(config: SecAggConfig) -> pb.SecAggSettings:
    """The job's settings as sent in JobConfig."""
    return pb.SecAggSettings(
        clip_norm=config.clip_norm,
        max_weight=config.max_weight,
        element_bound=config.element_bound or 0.0,
        corrupt_fraction=config.threat.corrupt_fraction,
        dropout_fraction=config.threat.dropout_fraction,
        security_bits=config.threat.security_bits,
        correctness_bits=config.threat.correctness_bits,
        allow_unsigned=config.allow_unsigned,
        noise_std=config.noise_std,
    )


def config_of(settings: pb.SecAggSettings) -> SecAggConfig:
    """The settings a JobConfig carries (pydantic checks every value; ValueError if bad)."""
    threat = ThreatModel(
        corrupt_fraction=settings.corrupt_fraction,
        dropout_fraction=settings.dropout_fraction,
        security_bits=settings.security_bits,
        correctness_bits=settings.correctness_bits,
    )
    return SecAggConfig(
        clip_norm=settings.clip_norm,
        max_weight=settings.max_weight,
        element_bound=settings.element_bound or None,
        threat=threat,
        allow_unsigned=settings.allow_unsigned,
        noise_std=settings.noise_std,
    )


def setup_message(setup: RoundSetup) -> pb.SecAggSetup:
    """A round's setup as sent in SyncModel (the job id is the JobConfig's)."""
    return pb.SecAggSetup(
        round=setup.round,
        attempt=setup.attempt,
        participants=list(setup.participants),
        length=setup.length,
    )


def setup_of(message: pb.SecAggSetup, job_id: int) -> RoundSetup:
    """The round's setup from its SyncModel."""
    return RoundSetup(
        job_id=job_id,
        round=message.round,
        attempt=bytes(message.attempt),
        participants=tuple(int(cid) for cid in message.participants),
        length=int(message.length),
    )


def advert_message(advert: KeyAdvert) -> pb.SecAggKeyAdvert:
    """A client's advert on the wire."""
    return pb.SecAggKeyAdvert(
        client_id=advert.client_id,
        name=advert.name,
        cipher_key=advert.cipher_key,
        mask_key=advert.mask_key,
        self_mask_commitment=advert.self_mask_commitment,
        round_digest=advert.round_digest,
        certificate=advert.certificate,
        signature=advert.signature,
    )


def advert_of(message: pb.SecAggKeyAdvert) -> KeyAdvert:
    """A client's advert from the wire."""
    return KeyAdvert(
        client_id=int(message.client_id),
        name=message.name,
        cipher_key=bytes(message.cipher_key),
        mask_key=bytes(message.mask_key),
        self_mask_commitment=bytes(message.self_mask_commitment),
        round_digest=bytes(message.round_digest),
        certificate=bytes(message.certificate),
        signature=bytes(message.signature),
    )


def roster_message(roster: KeyRoster) -> pb.SecAggKeyRoster:
    """A client's roster on the wire."""
    return pb.SecAggKeyRoster(
        clients=list(roster.clients), adverts=[advert_message(a) for a in roster.adverts]
    )


def roster_of(message: pb.SecAggKeyRoster) -> KeyRoster:
    """A client's roster from the wire."""
    return KeyRoster(
        clients=tuple(int(cid) for cid in message.clients),
        adverts=tuple(advert_of(a) for a in message.adverts),
    )


def _share_message(share: EncryptedShare) -> pb.SecAggEncryptedShare:
    return pb.SecAggEncryptedShare(
        sender=share.sender,
        recipient=share.recipient,
        nonce=share.nonce,
        ciphertext=share.ciphertext,
    )


def _share_of(message: pb.SecAggEncryptedShare) -> EncryptedShare:
    return EncryptedShare(
        sender=int(message.sender),
        recipient=int(message.recipient),
        nonce=bytes(message.nonce),
        ciphertext=bytes(message.ciphertext),
    )


def shares_message(shares: KeyShares) -> pb.SecAggKeyShares:
    """A client's encrypted shares on the wire."""
    return pb.SecAggKeyShares(
        sender=shares.sender, shares=[_share_message(s) for s in shares.shares]
    )


def shares_of(message: pb.SecAggKeyShares) -> KeyShares:
    """A client's encrypted shares from the wire."""
    return KeyShares(sender=int(message.sender), shares=tuple(_share_of(s) for s in message.shares))


def routed_message(routed: RoutedShares) -> pb.SecAggRoutedShares:
    """The shares routed to one client, on the wire."""
    return pb.SecAggRoutedShares(
        recipient=routed.recipient, shares=[_share_message(s) for s in routed.shares]
    )


def routed_of(message: pb.SecAggRoutedShares) -> RoutedShares:
    """The shares routed to one client, from the wire."""
    return RoutedShares(
        recipient=int(message.recipient), shares=tuple(_share_of(s) for s in message.shares)
    )


def request_message(request: UnmaskRequest) -> pb.SecAggUnmaskRequest:
    """An unmask request on the wire."""
    return pb.SecAggUnmaskRequest(
        self_mask_of=list(request.self_mask_of), mask_key_of=list(request.mask_key_of)
    )


def request_of(message: pb.SecAggUnmaskRequest) -> UnmaskRequest:
    """An unmask request from the wire."""
    return UnmaskRequest(
        self_mask_of=tuple(int(cid) for cid in message.self_mask_of),
        mask_key_of=tuple(int(cid) for cid in message.mask_key_of),
    )


def response_message(response: UnmaskResponse) -> pb.SecAggUnmaskResponse:
    """An unmask response on the wire."""
    message = pb.SecAggUnmaskResponse(sender=response.sender)
    for peer, share in response.self_mask_shares.items():
        message.self_mask_shares[peer] = share
    for peer, share in response.mask_key_shares.items():
        message.mask_key_shares[peer] = share
    return message


def response_of(message: pb.SecAggUnmaskResponse) -> UnmaskResponse:
    """An unmask response from the wire."""
    return UnmaskResponse(
        sender=int(message.sender),
        self_mask_shares={int(k): bytes(v) for k, v in message.self_mask_shares.items()},
        mask_key_shares={int(k): bytes(v) for k, v in message.mask_key_shares.items()},
    )
