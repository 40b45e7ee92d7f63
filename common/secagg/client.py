"""A client's side of one secure-aggregation attempt, as a state machine with no transport.

    ADVERTISE --advertise()--> SHARE --share_keys(roster)--> RECEIVE
      --receive_shares(routed)--> UPLOAD --masked_input(...) exhausted--> UNMASK
      --unmask(request)--> DONE;   any refusal, or an upload left unfinished --> FAILED

Each method takes and returns the dataclasses of ``messages.py``; a message that breaks the
protocol raises SecAggRefusedError and moves the attempt to FAILED, where it answers nothing
more (the transport leaves the round). One object is one attempt: its keys and self-mask seed
are drawn when it is made, so a round run again (new attempt nonce) never reuses a mask.

The core safety rule: for no peer does this client ever reveal both its self-mask share and its
mask-key share. One unmask answer per attempt, the two asked sets disjoint, each peer in exactly
one of them; and with an ``UnmaskLedger`` shared across attempts, a round number is answered
again only with the same survivors (else two sums over different sets of the same updates
would give away their difference).

Threading: one caller at a time, except that ``masked_input(..., ahead=k)`` makes its chunks on
a producer thread (``ahead.py``) that reads the attempt's keys and never its stage: the stage
is set by the consuming generator, after the last chunk is taken.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Iterable, Iterator

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import NDArray

from fedsilo.common.errors import ConfigError, SecAggError, SecAggRefusedError
from fedsilo.common.logging import get_logger
from fedsilo.common.secagg import keys, shamir
from fedsilo.common.secagg.ahead import run_ahead
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.masks import (
    BLOCK_WORDS,
    DEFAULT_CHUNK_WORDS,
    WORD,
    MaskStream,
    Scratch,
    add_masks,
)
from fedsilo.common.secagg.messages import (
    NONCE_BYTES,
    EncryptedShare,
    KeyAdvert,
    KeyRoster,
    KeyShares,
    RoundSetup,
    RoutedShares,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsilo.common.secagg.plan import Plan, make_plan
from fedsilo.common.secagg.quantize import Quantizer


class ClientStage(enum.Enum):
    """Where a client's attempt stands."""

    ADVERTISE = "advertise"
    SHARE = "share"
    RECEIVE = "receive"
    UPLOAD = "upload"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


class UnmaskLedger:
    """The survivors each round's unmask answer named; a client keeps one across attempts."""

    def __init__(self) -> None:
        self._answered: dict[int, tuple[frozenset[int], frozenset[int]]] = {}

    def check(self, round_number: int, view: tuple[frozenset[int], frozenset[int]]) -> None:
        """Refuse to answer a round again with other survivors than the first time."""
        first = self._answered.get(round_number)
        if first is not None and first != view:
            raise SecAggRefusedError(
                f"round {round_number} was unmasked before with other survivors; answering"
                " again would reveal the difference of two sums of the same updates"
            )

    def record(self, round_number: int, view: tuple[frozenset[int], frozenset[int]]) -> None:
        """Remember the answer given for ``round_number``."""
        self._answered.setdefault(round_number, view)


class SecAggClient:
    """One client's keys, shares and masks for one attempt of one round."""

    def __init__(
        self,
        setup: RoundSetup,
        client_id: int,
        config: SecAggConfig,
        *,
        identity: keys.Identity | None,
        trust: keys.Trust | None,
        ledger: UnmaskLedger | None = None,
        entropy: shamir.Entropy = secrets.token_bytes,  # tests pass a seeded source
    ) -> None:
        if client_id not in setup.participants:
            raise SecAggRefusedError(f"client {client_id} is not a participant of this round")
        if not config.allow_unsigned and (identity is None or trust is None):
            raise ConfigError("secure aggregation signs keys: a certificate and the CA are needed")
        self.log = get_logger(round=setup.round, client_id=client_id)
        if config.allow_unsigned:
            self.log.warning(
                "secagg_keys_unsigned", risk="a server can substitute keys and read updates"
            )
        self.setup, self.client_id, self.config = setup, client_id, config
        self.identity = None if config.allow_unsigned else identity
        self.trust = None if config.allow_unsigned else trust
        self.ledger = ledger if ledger is not None else UnmaskLedger()
        self.entropy = entropy
        self.digest = keys.round_digest(setup, config)
        self.quantizer = Quantizer.for_round(config, len(setup.participants))
        self._cipher_key = X25519PrivateKey.from_private_bytes(entropy(32))
        self._mask_key = X25519PrivateKey.from_private_bytes(entropy(32))
        self._self_seed = entropy(32)
        self.stage = ClientStage.ADVERTISE
        self.plan: Plan | None = None
        self._peers: dict[int, KeyAdvert] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (self-mask, mask-key) share
        self._advert: KeyAdvert | None = None
        self._cipher_secrets: dict[int, bytes] = {}

    def _expect(self, stage: ClientStage, what: str) -> None:
        if self.stage is not stage:
            raise SecAggRefusedError(f"{what} now is out of order (at stage {self.stage.value})")
        # Until the step succeeds: a refusal (or a stream abandoned midway) ends the attempt.
        self.stage = ClientStage.FAILED

    def advertise(self) -> KeyAdvert:
        """Return this attempt's public keys, signed unless the job runs unsigned."""
        self._expect(ClientStage.ADVERTISE, "advertising keys")
        name = self.identity.name if self.identity is not None else f"client-{self.client_id}"
        advert = KeyAdvert(
            client_id=self.client_id,
            name=name,
            cipher_key=keys.public_key_bytes(self._cipher_key),
            mask_key=keys.public_key_bytes(self._mask_key),
            self_mask_commitment=keys.commitment(self.digest, self.client_id, self._self_seed),
            round_digest=self.digest,
        )
        if self.identity is not None:
            signature = keys.sign(self.identity, keys.advert_payload(advert))
            advert = dataclasses.replace(
                advert, certificate=self.identity.certificate, signature=signature
            )
        self._advert = advert
        self.stage = ClientStage.SHARE
        return advert

    def share_keys(self, roster: KeyRoster) -> KeyShares:
        """Check the group's adverts, derive the graph, and encrypt shares to each neighbour."""
        self._expect(ClientStage.SHARE, "sharing keys")
        plan = self._check_roster(roster)
        group = sorted(plan.group(self.client_id))
        self_shares = shamir.split(self._self_seed, group, plan.threshold, self.entropy)
        key_shares = shamir.split(
            keys.private_key_bytes(self._mask_key), group, plan.threshold, self.entropy
        )
        self._held[self.client_id] = (self_shares[self.client_id], key_shares[self.client_id])
        out = []
        for peer in group:
            if peer != self.client_id:
                plaintext = self_shares[peer] + key_shares[peer]
                out.append(self._encrypt(peer, plaintext))
        self.plan = plan
        self.stage = ClientStage.RECEIVE
        return KeyShares(self.client_id, tuple(out))

    def _check_roster(self, roster: KeyRoster) -> Plan:
        clients = set(roster.clients)
        if len(clients) != len(roster.clients) or not clients <= set(self.setup.participants):
            raise SecAggRefusedError("the roster names clients twice or outside the round")
        if self.client_id not in clients:
            raise SecAggRefusedError("the roster leaves this client out")
        plan = make_plan(
            roster.clients,
            len(self.setup.participants),
            keys.graph_seed(self.digest),
            self.config.threat,
        )
        adverts = {advert.client_id: advert for advert in roster.adverts}
        if len(adverts) != len(roster.adverts) or set(adverts) != plan.group(self.client_id):
            raise SecAggRefusedError(
                f"the roster's adverts are for {sorted(adverts)}, not this client's group"
                f" {sorted(plan.group(self.client_id))}"
            )
        if adverts[self.client_id] != self._advert:
            raise SecAggRefusedError("the roster carries other keys under this client's id")
        names = [advert.name for advert in adverts.values()]
        if len(set(names)) != len(names):
            raise SecAggRefusedError("two clients of the roster claim the same name")
        for peer, advert in adverts.items():
            if peer != self.client_id:
                keys.check_advert(advert, self.digest, self.trust)
        self._peers = {peer: a for peer, a in adverts.items() if peer != self.client_id}
        return plan

    def _aead(self, peer: int, sender: int, recipient: int) -> AESGCM:
        shared = self._cipher_secrets.get(peer)
        if shared is None:
            shared = keys.agree(self._cipher_key, self._peers[peer].cipher_key, f"client {peer}")
            self._cipher_secrets[peer] = shared
        return AESGCM(keys.share_key(shared, self.digest, sender, recipient))

    def _encrypt(self, peer: int, plaintext: bytes) -> EncryptedShare:
        nonce = self.entropy(NONCE_BYTES)
        aad = keys.share_aad(self.digest, self.client_id, peer)
        ciphertext = self._aead(peer, self.client_id, peer).encrypt(nonce, plaintext, aad)
        return EncryptedShare(self.client_id, peer, nonce, ciphertext)

    def receive_shares(self, routed: RoutedShares) -> None:
        """Decrypt the shares neighbours sent; they fix whom this client's masks pair with."""
        self._expect(ClientStage.RECEIVE, "receiving shares")
        assert self.plan is not None
        for share in routed.shares:
            sender = share.sender
            if share.recipient != self.client_id or routed.recipient != self.client_id:
                raise SecAggRefusedError(f"a share for client {share.recipient} was routed here")
            if sender not in self._peers or sender in self._held:
                raise SecAggRefusedError(f"a share from client {sender}: not a neighbour or twice")
            aad = keys.share_aad(self.digest, sender, self.client_id)
            try:
                plaintext = self._aead(sender, sender, self.client_id).decrypt(
                    share.nonce, share.ciphertext, aad
                )
            except (InvalidTag, ValueError) as exc:
                raise SecAggRefusedError(
                    f"the share from client {sender} does not decrypt: altered on the way"
                ) from exc
            self_share, key_share = plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :]
            shamir.share_value(self_share)  # refuse malformed shares now, not at unmasking
            shamir.share_value(key_share)
            self._held[sender] = (self_share, key_share)
        if len(self._held) < self.plan.threshold:
            raise SecAggError(
                f"only {len(self._held)} of this client's group hold its shares,"
                f" {self.plan.threshold} are needed"
            )
        self.stage = ClientStage.UPLOAD

    def masked_input(
        self,
        values: Iterable[NDArray[np.floating]],
        *,
        norm: float,
        weight: int,
        chunk_words: int = DEFAULT_CHUNK_WORDS,
        ahead: int = 0,
    ) -> Iterator[bytes]:
        """Yield the masked upload: ``length`` model words then the weight word, in chunks.

        ``values`` are the delta's elements in order (any piece sizes), ``norm`` its L2 norm.
        With ``ahead`` > 0 and more than one chunk, a producer thread makes up to that many
        chunks ahead of the consumer (masking overlaps sending); the stage still moves on only
        when the consumer has taken the last chunk.
        """
        self._expect(ClientStage.UPLOAD, "the masked upload")
        self.quantizer.check_weight(weight)
        factor = self.quantizer.clip_factor(norm)
        chunks = self._masked_chunks(values, factor, weight, chunk_words)
        if ahead and self.setup.length >= chunk_words:  # one chunk: nothing to overlap
            chunks = run_ahead(chunks, ahead, name=f"secagg-mask-{self.client_id}")
        yield from chunks
        self.stage = ClientStage.UNMASK

    def _mask_streams(self) -> list[tuple[MaskStream, int]]:
        """The self-mask (added) and one pairwise mask per peer (added by the lower id)."""
        streams = [(MaskStream(keys.self_mask_seed(self._self_seed, self.digest)), 1)]
        for peer in sorted(self._held):
            if peer != self.client_id:
                shared = keys.agree(self._mask_key, self._peers[peer].mask_key, f"client {peer}")
                seed = keys.pair_seed(shared, self.digest, self.client_id, peer)
                streams.append((MaskStream(seed), 1 if self.client_id < peer else -1))
        return streams

    def _masked_chunks(
        self,
        values: Iterable[NDArray[np.floating]],
        factor: float,
        weight: int,
        chunk_words: int,
    ) -> Iterator[bytes]:
        streams = self._mask_streams()
        scratch = Scratch(min(chunk_words, BLOCK_WORDS))
        wide = np.empty(scratch.max_words, dtype=np.float64)  # the quantizer's float64 block
        pending = np.empty(chunk_words, dtype=WORD)
        filled, total = 0, 0
        for piece in self._pieces(values):
            total += len(piece)
            if total > self.setup.length:
                raise SecAggRefusedError(f"the update has more than {self.setup.length} values")
            taken = 0
            while taken < len(piece):
                count = min(len(piece) - taken, chunk_words - filled)
                target = pending[filled : filled + count]
                self.quantizer.encode_into(
                    piece[taken : taken + count], factor, weight, target, wide
                )
                filled, taken = filled + count, taken + count
                if filled == chunk_words:
                    add_masks(pending, streams, scratch)
                    yield pending.tobytes()
                    filled = 0
        if total != self.setup.length:
            raise SecAggRefusedError(f"the update has {total} values, not {self.setup.length}")
        pending[filled] = self.quantizer.weight_word(weight)[0]  # the last word (always room)
        add_masks(pending[: filled + 1], streams, scratch)
        yield pending[: filled + 1].tobytes()

    def _pieces(self, values: Iterable[NDArray[np.floating]]) -> Iterator[NDArray[np.floating]]:
        for array in values:
            if not np.issubdtype(array.dtype, np.floating):
                raise SecAggRefusedError(f"the update holds {array.dtype} values, not floats")
            yield array.reshape(-1)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal survivors' self-mask shares and dropped peers' mask-key shares, never both."""
        self._expect(ClientStage.UNMASK, "an unmask request")
        assert self.plan is not None
        survivors, dropped = set(request.self_mask_of), set(request.mask_key_of)
        both = survivors & dropped
        if both:
            raise SecAggRefusedError(
                f"refused: the server asked for both shares of client(s) {sorted(both)}"
            )
        if len(survivors) != len(request.self_mask_of) or len(dropped) != len(request.mask_key_of):
            raise SecAggRefusedError("the unmask request names a client twice")
        if self.client_id in dropped:
            raise SecAggRefusedError("refused: the server asked for this client's own mask key")
        if survivors | dropped != set(self._held):
            raise SecAggRefusedError(
                f"the unmask request covers {sorted(survivors | dropped)}, not the clients whose"
                f" shares this client holds {sorted(self._held)}"
            )
        if len(survivors) < self.plan.threshold:
            raise SecAggRefusedError(
                f"only {len(survivors)} survivors in this client's group,"
                f" below the threshold {self.plan.threshold}"
            )
        view = (frozenset(survivors), frozenset(dropped))
        self.ledger.check(self.setup.round, view)
        self.stage = ClientStage.DONE
        self.ledger.record(self.setup.round, view)
        return UnmaskResponse(
            self.client_id,
            {peer: self._held[peer][0] for peer in sorted(survivors)},
            {peer: self._held[peer][1] for peer in sorted(dropped)},
        )
