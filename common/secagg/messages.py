"""The messages of a secure-aggregation round, as plain dataclasses (the wire maps them 1:1).

    server -> all selected   RoundSetup       job, round, attempt nonce, participants, length
    client -> server         KeyAdvert        two X25519 public keys, a commitment, signed
    server -> each client    KeyRoster        the ids that advertised + its group's adverts
    client -> server         KeyShares        one EncryptedShare per neighbour
    server -> each client    RoutedShares     the EncryptedShares addressed to it
    client -> server         masked upload    length + 1 uint32 words (little-endian), chunked
    server -> each uploader  UnmaskRequest    whose self-mask / whose mask-key shares to reveal
    client -> server         UnmaskResponse   those shares, in the clear

Bytes fields are raw: X25519 keys 32 bytes, digests 32, AES-GCM nonces 12, shares 66.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ATTEMPT_BYTES = 16
KEY_BYTES = 32
DIGEST_BYTES = 32
NONCE_BYTES = 12
SEALED_BYTES = 2 * 66 + 16  # two shares and the AES-GCM tag


@dataclass(frozen=True)
class RoundSetup:
    """Opens a round's secure aggregation: what every selected client must agree on."""

    job_id: int
    round: int
    # 16 random bytes the server draws afresh for every (round, attempt): a round run again
    # after a restart gets new ones, and with them new keys and masks.
    attempt: bytes
    participants: tuple[int, ...]  # the selected client ids; their count sets the range
    length: int  # elements of the update vector (the model's floating-point values)


@dataclass(frozen=True)
class KeyAdvert:
    """A client's public keys for this round, signed with its certificate's key."""

    client_id: int
    name: str
    cipher_key: bytes  # X25519: the shares sent to this client are encrypted to it
    mask_key: bytes  # X25519: its pairwise masks are agreed with it
    self_mask_commitment: bytes  # SHA-256 binding the self-mask seed, checked on rebuild
    round_digest: bytes  # what the keys are for: job, round, attempt, participants, settings
    certificate: bytes = b""  # PEM chain of the client's certificate; empty when unsigned
    signature: bytes = b""  # ECDSA P-256 / SHA-256 over all fields above; empty when unsigned


@dataclass(frozen=True)
class KeyRoster:
    """For one client: every id that advertised keys, and the adverts of its group."""

    clients: tuple[int, ...]
    adverts: tuple[KeyAdvert, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """One client's shares (self-mask seed, mask key) for one neighbour, AES-GCM encrypted."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class KeyShares:
    """A client's encrypted shares, one per neighbour."""

    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class RoutedShares:
    """The encrypted shares addressed to one client, from the neighbours that sent theirs."""

    recipient: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """Which peers' self-mask shares (survivors) and mask-key shares (dropped) to reveal."""

    self_mask_of: tuple[int, ...]
    mask_key_of: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """The shares a client reveals, keyed by the peer they belong to."""

    sender: int
    self_mask_shares: dict[int, bytes] = field(default_factory=dict)
    mask_key_shares: dict[int, bytes] = field(default_factory=dict)
