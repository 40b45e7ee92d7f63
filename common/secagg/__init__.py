"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+ neighbour graph, Bell et al., CCS 2020).

The coordinator learns the sum of the surviving clients' quantized, weighted updates and the sum
of their weights, nothing else, as long as fewer clients than the threat model allows collude
with it. Pure protocol logic with no transport: ``SecAggClient`` and ``SecAggServer`` are state
machines over the dataclasses of ``messages``; the daemons carry those over the wire.

    stage        client                          server
    advertise    advertise() -> KeyAdvert        receive_advert(); close_adverts() -> KeyRoster
    share keys   share_keys(KeyRoster)           receive_shares(); close_shares() -> RoutedShares
                 -> KeyShares
    upload       receive_shares(RoutedShares);   begin_upload(id).add(chunk)...finish();
                 masked_input(...) -> chunks     close_uploads() -> UnmaskRequest
    unmask       unmask(UnmaskRequest)           receive_unmask(); finish() -> AggregateResult
                 -> UnmaskResponse

Modules: ``shamir`` (sharing over 2^521 - 1), ``plan`` (graph and threshold), ``keys`` (round
digest, signatures, HKDF), ``masks`` (AES-CTR mask streams), ``quantize`` (Z_2^32 encoding),
``result`` (running sum, decoding), ``vectors`` (a state dict as the summed vector).
docs/privacy.md states the threat model.
"""

from fedsilo.common.secagg.client import ClientStage, SecAggClient, UnmaskLedger
from fedsilo.common.secagg.config import SecAggConfig
from fedsilo.common.secagg.keys import Identity, Trust
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
from fedsilo.common.secagg.plan import GraphKind, Plan, ThreatModel, make_plan
from fedsilo.common.secagg.quantize import Quantizer
from fedsilo.common.secagg.result import AggregateResult
from fedsilo.common.secagg.server import MaskedUpload, SecAggServer, ServerStage

__all__ = [
    "AggregateResult",
    "ClientStage",
    "EncryptedShare",
    "GraphKind",
    "Identity",
    "KeyAdvert",
    "KeyRoster",
    "KeyShares",
    "MaskedUpload",
    "Plan",
    "Quantizer",
    "RoundSetup",
    "RoutedShares",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerStage",
    "ThreatModel",
    "Trust",
    "UnmaskLedger",
    "UnmaskRequest",
    "UnmaskResponse",
    "make_plan",
]
