"""The server's side of one secure-aggregation attempt, as a state machine with no transport.

    ADVERTISE  receive_advert()* -> close_adverts()  -> a KeyRoster per client     (U1 fixed)
    SHARE      receive_shares()* -> close_shares()   -> RoutedShares per client    (U2 fixed)
    UPLOAD     begin_upload().add()*.finish() -> close_uploads() -> UnmaskRequests (U3 fixed)
    UNMASK     receive_unmask()* -> finish()         -> AggregateResult            (U4 fixed)

``drop(client)`` may come at any stage; ``waiting_for()`` says whom the stage still waits for,
so the transport closes a stage when nobody is left or at its progress deadline. Each close
checks that the clients left can still complete (every needed secret keeps t live holders) and
raises SecAggError otherwise, naming the client that cannot be rebuilt. A refused message
raises SecAggRefusedError: the transport drops its sender and calls ``drop``.

Memory: the running sum (length + 1 uint32 words) and one chunk per upload in flight; masked
chunks are added mod 2^32 as they arrive, in any order (addition mod 2^32 is exact and
commutative: the sum is the same bits whatever the arrival order). An upload cut off midway has
already been added: ``abandon(replay)`` subtracts its chunks again from a copy the transport
kept (e.g. its spill file); without one, the attempt cannot remove it and must be run again.

Threading: every method takes the object's one lock; ``MaskedUpload.add`` holds it only for
the addition of its chunk, so uploads on several threads interleave chunk by chunk. ``finish``
removes the masks, under the lock, on up to UNMASK_THREADS short-lived threads of its own,
each over its own range of the sum.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsilo.common.errors import ConfigError, SecAggError, SecAggRefusedError
from fedsilo.common.logging import get_logger
from fedsilo.common.secagg import keys, shamir
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.masks import WORD_BYTES
from fedsilo.common.secagg.messages import (
    NONCE_BYTES,
    SEALED_BYTES,
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
from fedsilo.common.secagg.result import AggregateResult, RunningSum

# Threads of the unmasking pass, at most (one range of the sum each; see RunningSum.apply_masks).
UNMASK_THREADS = 4


class ServerStage(enum.Enum):
    """Where the server's attempt stands."""

    ADVERTISE = "advertise"
    SHARE = "share"
    UPLOAD = "upload"
    UNMASK = "unmask"
    DONE = "done"


class SecAggServer:
    """Collects keys, routes shares, sums masked uploads and removes the masks of one attempt."""

    def __init__(
        self, setup: RoundSetup, config: SecAggConfig, *, trust: keys.Trust | None
    ) -> None:
        if not config.allow_unsigned and trust is None:
            raise ConfigError("secure aggregation checks signed keys: the CA is needed")
        if config.allow_unsigned:
            get_logger(round=setup.round).warning(
                "secagg_keys_unsigned", risk="a server can substitute keys and read updates"
            )
        self.setup, self.config = setup, config
        self.trust = None if config.allow_unsigned else trust
        self.digest = keys.round_digest(setup, config)
        self.quantizer = Quantizer.for_round(config, len(setup.participants))
        self.stage = ServerStage.ADVERTISE
        self.plan: Plan | None = None
        self._lock = threading.Lock()
        self._gone: set[int] = set()
        self._adverts: dict[int, KeyAdvert] = {}
        self._shares: dict[int, KeyShares] = {}
        self._sharers: frozenset[int] = frozenset()  # U2
        self._uploads: dict[int, MaskedUpload] = {}
        self._uploaders: frozenset[int] = frozenset()  # U3
        self._requests: dict[int, UnmaskRequest] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self._broken: str | None = None
        self.sum = RunningSum(setup.length + 1)

    def _expect(self, stage: ServerStage, what: str) -> None:
        if self.stage is not stage:
            raise SecAggRefusedError(f"{what} now is out of order (at stage {self.stage.value})")

    def waiting_for(self) -> frozenset[int]:
        """Return the clients the current stage still waits for."""
        with self._lock:
            if self.stage is ServerStage.ADVERTISE:
                expected, done = set(self.setup.participants), set(self._adverts)
            elif self.stage is ServerStage.SHARE:
                expected, done = set(self._adverts), set(self._shares)
            elif self.stage is ServerStage.UPLOAD:
                expected = set(self._sharers)
                done = {c for c, upload in self._uploads.items() if upload.finished}
            elif self.stage is ServerStage.UNMASK:
                expected, done = set(self._uploaders), set(self._responses)
            else:
                return frozenset()
            return frozenset(expected - done - self._gone)

    def drop(self, client: int) -> None:
        """Take a client out of the round from now on (it disconnected, stalled or lied)."""
        with self._lock:
            self._gone.add(client)
            if self.stage is ServerStage.ADVERTISE:
                self._adverts.pop(client, None)
            elif self.stage is ServerStage.SHARE:
                self._shares.pop(client, None)
            elif self.stage is ServerStage.UPLOAD:
                upload = self._uploads.get(client)
                if upload is not None and not (upload.finished or upload.abandoned):
                    self._abandon_locked(upload, None)

    def receive_advert(self, advert: KeyAdvert) -> None:
        """Take a client's signed keys (refused: wrong round, bad signature, name taken)."""
        with self._lock:
            self._expect(ServerStage.ADVERTISE, "advertised keys")
            client = advert.client_id
            if client not in self.setup.participants or client in self._gone:
                raise SecAggRefusedError(f"client {client} is not taking part in this round")
            if client in self._adverts:
                raise SecAggRefusedError(f"client {client} advertised keys twice")
            if any(other.name == advert.name for other in self._adverts.values()):
                raise SecAggRefusedError(f"name {advert.name!r} advertised by two clients")
            keys.check_advert(advert, self.digest, self.trust)
            self._adverts[client] = advert

    def close_adverts(self) -> dict[int, KeyRoster]:
        """Fix who takes part (U1), derive the graph and return each client's roster."""
        with self._lock:
            self._expect(ServerStage.ADVERTISE, "closing the key stage")
            clients = sorted(set(self._adverts) - self._gone)
            plan = make_plan(
                clients,
                len(self.setup.participants),
                keys.graph_seed(self.digest),
                self.config.threat,
            )
            self.plan = plan
            self.stage = ServerStage.SHARE
            return {
                client: KeyRoster(
                    tuple(clients), tuple(self._adverts[v] for v in sorted(plan.group(client)))
                )
                for client in clients
            }

    def receive_shares(self, shares: KeyShares) -> None:
        """Take a client's encrypted shares: exactly one for each of its neighbours."""
        with self._lock:
            self._expect(ServerStage.SHARE, "key shares")
            assert self.plan is not None
            sender = shares.sender
            if sender not in self.plan.neighbours or sender in self._gone:
                raise SecAggRefusedError(f"client {sender} did not advertise keys this round")
            if sender in self._shares:
                raise SecAggRefusedError(f"client {sender} sent its shares twice")
            for share in shares.shares:
                if len(share.nonce) != NONCE_BYTES or len(share.ciphertext) != SEALED_BYTES:
                    raise SecAggRefusedError(f"client {sender} sent a share of the wrong size")
            recipients = [share.recipient for share in shares.shares]
            senders = {share.sender for share in shares.shares}
            if senders - {sender} or sorted(recipients) != sorted(self.plan.neighbours[sender]):
                raise SecAggRefusedError(
                    f"client {sender} sent shares to {sorted(recipients)}, not to its"
                    f" neighbours {sorted(self.plan.neighbours[sender])}"
                )
            self._shares[sender] = shares

    def close_shares(self) -> dict[int, RoutedShares]:
        """Fix who shared (U2) and return, for each of them, the shares addressed to it."""
        with self._lock:
            self._expect(ServerStage.SHARE, "closing the share stage")
            plan = self.plan
            assert plan is not None
            sharers = frozenset(self._shares) - self._gone
            for client in sorted(sharers):
                holders = len(plan.group(client) & sharers)
                if holders < plan.threshold:
                    raise SecAggError(
                        f"client {client}'s shares reached {holders} live holders,"
                        f" {plan.threshold} are needed"
                    )
            routed: dict[int, list[EncryptedShare]] = {client: [] for client in sharers}
            for sender in sorted(sharers):
                for share in self._shares[sender].shares:
                    if share.recipient in sharers:
                        routed[share.recipient].append(share)
            self._sharers = sharers
            self.sum.allocate()
            self.stage = ServerStage.UPLOAD
            return {client: RoutedShares(client, tuple(s)) for client, s in routed.items()}

    def begin_upload(self, client: int) -> MaskedUpload:
        """Open a client's masked upload; its chunks are added to the sum as they come."""
        with self._lock:
            self._expect(ServerStage.UPLOAD, "a masked upload")
            if client not in self._sharers or client in self._gone:
                raise SecAggRefusedError(f"client {client} has no place in this round's sum")
            if client in self._uploads:
                raise SecAggRefusedError(f"client {client} uploads a second time")
            upload = MaskedUpload(self, client)
            self._uploads[client] = upload
            return upload

    def _abandon_locked(self, upload: MaskedUpload, replay: Iterable[bytes] | None) -> None:
        upload.abandoned = True
        if not upload.words:
            return
        if replay is None:
            self._broken = (
                f"client {upload.client}'s upload broke off after {upload.words} of"
                f" {self.sum.length} words with no copy to subtract: run the round again"
            )
            return
        removed = 0
        for chunk in replay:
            removed += self.sum.subtract(removed, chunk)
        if removed != upload.words:
            self._broken = f"client {upload.client}: {removed} words replayed, {upload.words} added"
            raise SecAggError(self._broken)

    def close_uploads(self) -> dict[int, UnmaskRequest]:
        """Fix who uploaded (U3) and return each uploader's unmask request."""
        with self._lock:
            self._expect(ServerStage.UPLOAD, "closing the upload stage")
            if self._broken is not None:
                raise SecAggError(self._broken)
            plan = self.plan
            assert plan is not None
            uploaders = frozenset(c for c, u in self._uploads.items() if u.finished)
            live = uploaders - self._gone  # an uploader that left since still counts in the sum
            self._check_holders(uploaders, live)
            for client in sorted(live):
                group = plan.group(client) & self._sharers
                self._requests[client] = UnmaskRequest(
                    tuple(sorted(group & uploaders)), tuple(sorted(group - uploaders))
                )
            self._uploaders = uploaders
            self.stage = ServerStage.UNMASK
            return dict(self._requests)

    def _check_holders(self, uploaders: frozenset[int], live: frozenset[int]) -> None:
        """Raise unless every secret the sum needs has t holders among ``live``."""
        plan = self.plan
        assert plan is not None
        for client in sorted(uploaders):
            holders = len(plan.group(client) & live)
            if holders < plan.threshold:
                raise SecAggError(
                    f"client {client}'s self-mask has {holders} live holders,"
                    f" {plan.threshold} needed: too few clients left"
                )
        for client in sorted(self._sharers - uploaders):
            if plan.neighbours[client] & uploaders:
                holders = len(plan.neighbours[client] & live)
                if holders < plan.threshold:
                    raise SecAggError(
                        f"dropped client {client}'s mask key has {holders} live holders,"
                        f" {plan.threshold} needed: too few clients left"
                    )

    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Take an uploader's revealed shares: exactly those it was asked for."""
        with self._lock:
            self._expect(ServerStage.UNMASK, "revealed shares")
            sender = response.sender
            request = self._requests.get(sender)
            if request is None or sender in self._gone or sender in self._responses:
                raise SecAggRefusedError(f"client {sender} was not asked to unmask, or answered")
            if set(response.self_mask_shares) != set(request.self_mask_of) or set(
                response.mask_key_shares
            ) != set(request.mask_key_of):
                raise SecAggRefusedError(f"client {sender} revealed other shares than asked")
            for share in [*response.self_mask_shares.values(), *response.mask_key_shares.values()]:
                shamir.share_value(share)
            self._responses[sender] = response

    def finish(self) -> AggregateResult:
        """Rebuild the needed secrets from the answers, remove all masks, return the sum."""
        with self._lock:
            self._expect(ServerStage.UNMASK, "finishing the round")
            self.stage = ServerStage.DONE  # once only, even if it fails: masks come off in place
            self._check_holders(self._uploaders, frozenset(self._responses))
            masks = [
                (keys.self_mask_seed(self._rebuild_self_seed(client), self.digest), -1)
                for client in sorted(self._uploaders)
            ]
            for client in sorted(self._sharers - self._uploaders):
                masks.extend(self._pair_masks(client))
            # All seeds first, then one pass over the sum (in ranges, in parallel).
            self.sum.apply_masks(masks, threads=unmask_threads())
            dropped = tuple(sorted(set(self._adverts) - self._uploaders))
            return AggregateResult(
                self.sum.words, self.quantizer, tuple(sorted(self._uploaders)), dropped
            )

    def _collect(self, owner: int, holders: frozenset[int], self_mask: bool) -> dict[int, bytes]:
        shares = {}
        for holder in sorted(holders & set(self._responses)):
            response = self._responses[holder]
            revealed = response.self_mask_shares if self_mask else response.mask_key_shares
            if owner in revealed:
                shares[holder] = revealed[owner]
        return shares

    def _rebuild_self_seed(self, client: int) -> bytes:
        assert self.plan is not None
        shares = self._collect(client, self.plan.group(client), self_mask=True)
        seed = shamir.reconstruct(shares, self.plan.threshold)
        if keys.commitment(self.digest, client, seed) != self._adverts[client].self_mask_commitment:
            raise SecAggError(f"client {client}'s self-mask shares do not rebuild its seed")
        return seed

    def _pair_masks(self, dropped: int) -> list[tuple[bytes, int]]:
        """The pairwise masks a dropped client's surviving partners added, to take off again."""
        assert self.plan is not None
        partners = self.plan.neighbours[dropped] & self._uploaders
        if not partners:
            return []
        shares = self._collect(dropped, self.plan.neighbours[dropped], self_mask=False)
        private = X25519PrivateKey.from_private_bytes(
            shamir.reconstruct(shares, self.plan.threshold)
        )
        if keys.public_key_bytes(private) != self._adverts[dropped].mask_key:
            raise SecAggError(f"dropped client {dropped}'s shares do not rebuild its mask key")
        masks = []
        for partner in sorted(partners):
            shared = keys.agree(private, self._adverts[partner].mask_key, f"client {partner}")
            seed = keys.pair_seed(shared, self.digest, partner, dropped)
            # The partner added its mask if its id is the lower one, subtracted it otherwise.
            masks.append((seed, -1 if partner < dropped else 1))
        return masks


def unmask_threads() -> int:
    """Return how many threads remove the masks: the CPUs this process may use, at most 4."""
    return max(1, min(UNMASK_THREADS, len(os.sched_getaffinity(0))))


class MaskedUpload:
    """One client's masked upload, added to the running sum chunk by chunk."""

    def __init__(self, server: SecAggServer, client: int) -> None:
        self._server = server
        self.client = client
        self.words = 0
        self.finished = False
        self.abandoned = False

    def add(self, chunk: bytes | memoryview) -> None:
        """Add the next chunk (a whole number of little-endian uint32 words) to the sum."""
        server = self._server
        with server._lock:
            if self.finished or self.abandoned or self.client in server._gone:
                raise SecAggRefusedError(f"client {self.client}'s upload is closed")
            if len(chunk) % WORD_BYTES:
                raise SecAggRefusedError(f"a chunk of {len(chunk)} bytes is not whole words")
            if self.words + len(chunk) // WORD_BYTES > server.sum.length:
                raise SecAggRefusedError(
                    f"client {self.client}'s upload runs past {server.sum.length} words"
                )
            self.words += server.sum.add(self.words, chunk)

    def finish(self) -> None:
        """Close the upload; refuse one shorter than the round's vector."""
        with self._server._lock:
            if self.words != self._server.sum.length or self.abandoned:
                raise SecAggRefusedError(
                    f"client {self.client}'s upload ended after {self.words} of"
                    f" {self._server.sum.length} words"
                )
            self.finished = True

    def abandon(self, replay: Iterable[bytes] | None = None) -> None:
        """Take a broken upload back out of the sum, subtracting ``replay`` (its chunks again)."""
        with self._server._lock:
            if not self.finished and not self.abandoned:
                self._server._abandon_locked(self, replay)
