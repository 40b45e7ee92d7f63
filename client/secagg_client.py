"""The client's side of secure aggregation over its session: keys, shares, masked upload, unmask.

The protocol itself is ``fedsilo.common.secagg.SecAggClient`` (one object per round attempt,
fresh keys each time); this module decides what a job's settings may ask of this client, keeps
the round's update until the masks can be made, and frames the masked upload as an ordinary
tensor stream of one uint32 vector (its weight inside: never in the clear).

    SyncModel(+setup) -> advertise keys, train, keep the update
    KeyRoster -> encrypted shares;  RoutedShares -> masked upload;  UnmaskRequest -> shares
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import xxhash

from fedsilo.client.config import ClientConfig
from fedsilo.common.bundles import load_client_bundle
from fedsilo.common.errors import PolicyError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import Identity, SecAggClient, SecAggConfig, Trust, UnmaskLedger
from fedsilo.common.secagg import wire as secagg_wire
from fedsilo.common.secagg.vectors import floating_names
from fedsilo.common.specs import TensorSpec, header_of
from fedsilo.common.wire import CLIENT_CHUNKS, serialize
from fedsilo.tasks.privacy import add_gaussian_noise_, clip_delta_, noise_generator

MASKED_NAME = "secagg.masked"  # the server's name for the one tensor of a masked upload
PIECE = 1 << 18
AHEAD = 2  # masked chunks a producer thread makes ahead of the sending one (O(chunk) memory)


@dataclass(frozen=True)
class SecAggKeys:
    """What this organisation signs its round keys with, and the CA its peers must chain to."""

    identity: Identity
    trust: Trust


def secagg_keys_of(config: ClientConfig) -> SecAggKeys | None:
    """The keys of a client with a bundle (mutual TLS); None in plaintext."""
    if config.bundle is None:
        return None
    bundle = load_client_bundle(config.bundle)
    return SecAggKeys(Identity.from_bundle(bundle), Trust.from_pem(bundle.root_certificates))


def accepted_config(settings: pb.SecAggSettings, keys: SecAggKeys | None) -> SecAggConfig:
    """The job's settings if this client can take part as they ask (PolicyError otherwise)."""
    try:
        config = secagg_wire.config_of(settings)
    except ValueError as exc:
        raise PolicyError(f"the job's secure-aggregation settings are invalid: {exc}") from exc
    if config.allow_unsigned and keys is not None:
        raise PolicyError(
            "the server asks for unsigned secure-aggregation keys, but this client has a "
            "certificate: unsigned keys would let the server substitute them"
        )
    if not config.allow_unsigned and keys is None:
        raise PolicyError("secure aggregation signs keys with the client's certificate: --bundle")
    return config


@dataclass
class MaskedRound:
    """One round's attempt: its protocol object and the update kept for the masked upload."""

    round: int
    protocol: SecAggClient
    delta: dict[str, torch.Tensor] | None = None  # trained - received, floating tensors
    weight: int = 0
    norm: float = 0.0  # the kept delta's L2 norm (after DP's clip)
    send: pb.SendModel | None = None  # the SendModel, metrics filled in, update to come

    @classmethod
    def begin(
        cls,
        setup: pb.SecAggSetup,
        job: pb.JobConfig,
        client_id: int,
        config: SecAggConfig,
        keys: SecAggKeys | None,
        ledger: UnmaskLedger,
    ) -> MaskedRound:
        """Make the round's keys (fresh: never reused across attempts)."""
        protocol = SecAggClient(
            secagg_wire.setup_of(setup, job.job_id),
            client_id,
            config,
            identity=keys.identity if keys is not None else None,
            trust=keys.trust if keys is not None else None,
            ledger=ledger,
        )
        return cls(setup.round, protocol)

    def advert(self) -> pb.ClientMessage:
        """The signed public keys of this attempt."""
        return pb.ClientMessage(secagg_advert=secagg_wire.advert_message(self.protocol.advertise()))

    def keep(
        self,
        trained: dict[str, torch.Tensor],
        received: dict[str, torch.Tensor],
        examples: int,
        send: pb.SendModel,
    ) -> None:
        """Keep ``trained - received`` (in ``received``'s buffers) for the masked upload.

        Its norm is taken now (and, with distributed DP, the delta clipped and noised), while
        the key stages wait for the round's slowest client, not once the shares are in.
        """
        delta = {}
        for name in floating_names(received):
            kept = received[name]
            # One pass, in place: a - b is exactly -(b - a) (round to nearest is symmetric).
            delta[name] = torch.sub(trained[name].to(kept.dtype), kept, out=kept)
        self.delta = delta
        self.weight = max(1, min(examples, self.protocol.config.max_weight))
        self.send = send
        config = self.protocol.config
        if config.noise_std > 0:  # distributed DP-FedAvg: clip, then this client's noise share
            self.norm = min(clip_delta_(self.delta, config.clip_norm), config.clip_norm)
            # Secret to this client. The quantizer is told the clipped norm: it clips nothing
            # more, and the noise keeps its scale.
            add_gaussian_noise_(self.delta, config.noise_std, noise_generator(None))
        else:
            self.norm = self._norm()

    def shares(self, roster: pb.SecAggKeyRoster) -> pb.ClientMessage:
        """This client's shares for its neighbours, encrypted to each."""
        shares = self.protocol.share_keys(secagg_wire.roster_of(roster))
        return pb.ClientMessage(secagg_shares=secagg_wire.shares_message(shares))

    def masked_upload(self, routed: pb.SecAggRoutedShares, chunk_size: int) -> Iterator[bytes]:
        """Take the neighbours' shares; return the frames of the masked update."""
        assert self.delta is not None and self.send is not None, "no update kept"
        self.protocol.receive_shares(secagg_wire.routed_of(routed))
        # The delta's own dtype: the quantizer widens each element to float64 as it scales it.
        pieces = (piece.numpy() for piece in self._pieces())
        words = self.protocol.masked_input(pieces, norm=self.norm, weight=self.weight, ahead=AHEAD)
        length = self.protocol.setup.length + 1
        spec = TensorSpec(MASKED_NAME, torch.uint32, (length,))
        self.send.update.CopyFrom(header_of([spec]))
        return _stream_frames(pb.ClientMessage(send_model=self.send), words, chunk_size)

    def unmask(self, request: pb.SecAggUnmaskRequest) -> pb.ClientMessage:
        """The shares the server asks for: never both kinds of one peer's (the protocol checks)."""
        response = self.protocol.unmask(secagg_wire.request_of(request))
        return pb.ClientMessage(secagg_unmask=secagg_wire.response_message(response))

    def _pieces(self) -> Iterator[torch.Tensor]:
        """The delta's values in order, in pieces of at most PIECE elements (views)."""
        assert self.delta is not None
        for tensor in self.delta.values():
            flat = tensor.detach().reshape(-1)
            for start in range(0, flat.numel(), PIECE):
                yield flat[start : start + PIECE]

    def _norm(self) -> float:
        """The delta's L2 norm: float64 sums of squares per piece (torch's dot: 8x numpy's)."""
        wide = torch.empty(PIECE, dtype=torch.float64)  # reused: no allocation per piece
        total = 0.0
        for piece in self._pieces():
            part = wide[: piece.numel()]
            part.copy_(piece)
            total += float(torch.dot(part, part))
        return math.sqrt(total)


def _stream_frames(
    opening: pb.ClientMessage, words: Iterator[bytes], chunk_size: int
) -> Iterator[bytes]:
    """Frame masked words as a tensor stream as they are made: O(chunk) memory, one hash."""
    yield serialize(opening)
    digest = xxhash.xxh3_64()
    for block in words:
        view = memoryview(block)
        for start in range(0, len(view), chunk_size):
            part = view[start : start + chunk_size]
            digest.update(part)
            yield CLIENT_CHUNKS.frame([part])
    trailer = pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=digest.intdigest()))
    yield serialize(trailer)
