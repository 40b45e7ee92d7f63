"""A hostile coordinator against a real fl-client under secure aggregation: it substitutes a
peer's public key, or asks for both kinds of share of one peer. The client refuses either with
one line and SECAGG_REFUSED, and reveals nothing more.

The coordinator is written in the test from the generated protobuf classes; the two peers it
pretends to route for are honest protocol objects of fedsilo's secure-aggregation library, with
certificates of the same federation. Nothing here comes from fedsilo.server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedsilo.common.bundles import load_client_bundle, load_server_bundle
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import (
    Identity,
    KeyAdvert,
    KeyRoster,
    RoundSetup,
    SecAggClient,
    SecAggConfig,
    Trust,
)
from fedsilo.common.secagg import wire as secagg_wire
from fedsilo.common.secagg.vectors import vector_length
from tests.integration.conftest import Daemons
from tests.integration.hostile_coordinator import HostileCoordinator, Peer, init_config, sync_inline
from tests.integration.test_hostile_coordinator import (
    CANARY,
    canary_state,
    error_codes,
    start_client,
)
from tests.integration.tls import JOB, provision

PEERS = (1, 2)
CONFIG = SecAggConfig(clip_norm=10.0, max_weight=1)


def roster_of(adverts: dict[int, KeyAdvert]) -> KeyRoster:
    return KeyRoster(
        clients=tuple(sorted(adverts)), adverts=tuple(adverts[c] for c in sorted(adverts))
    )


def attack(certs: Path, trust: Trust, how: str):
    """The coordinator's script: an honest round up to the moment it cheats (``how``)."""

    def script(peer: Peer) -> Iterator[pb.ServerMessage]:
        peer.next("hello")
        settings = secagg_wire.settings_message(CONFIG)
        yield init_config(CANARY, {}, job_id=JOB, secure_aggregation=settings)
        peer.next("ready")
        state = canary_state()
        setup = RoundSetup(JOB, 1, b"\x07" * 16, (0, *PEERS), vector_length(state))
        sync = sync_inline(state)
        sync.sync_model.secagg.CopyFrom(secagg_wire.setup_message(setup))
        yield sync
        peers = {
            cid: SecAggClient(
                setup,
                cid,
                CONFIG,
                identity=Identity.from_bundle(load_client_bundle(certs / f"peer-{cid}")),
                trust=trust,
            )
            for cid in PEERS
        }
        adverts = {0: secagg_wire.advert_of(peer.next("secagg_advert"))}
        adverts.update({cid: p.advertise() for cid, p in peers.items()})
        if how == "substitute_key":  # its own key in place of peer 1's: it could read peer 1
            forged = (
                X25519PrivateKey.generate()
                .public_key()
                .public_bytes(Encoding.Raw, PublicFormat.Raw)
            )
            adverts[1] = dataclasses.replace(adverts[1], mask_key=forged)
        roster = roster_of(adverts)
        yield pb.ServerMessage(secagg_roster=secagg_wire.roster_message(roster))
        if how == "substitute_key":
            return
        peer.next("secagg_shares")
        to_client = [
            share
            for p in peers.values()
            for share in p.share_keys(roster).shares
            if share.recipient == 0
        ]
        routed = pb.SecAggRoutedShares(recipient=0)
        for share in to_client:
            routed.shares.add(
                sender=share.sender,
                recipient=share.recipient,
                nonce=share.nonce,
                ciphertext=share.ciphertext,
            )
        yield pb.ServerMessage(secagg_routed=routed)
        peer.next("send_model")
        while peer.next_any()[0] != "trailer":  # the masked upload's chunks
            pass
        # The core rule: never both shares of one peer. Ask for peer 1's self-mask and key.
        yield pb.ServerMessage(
            secagg_unmask_request=pb.SecAggUnmaskRequest(self_mask_of=[0, 1, 2], mask_key_of=[1])
        )

    return script


def run_attack(daemons: Daemons, tmp_path: Path, how: str) -> tuple[str, list[str]]:
    """Run the attack against a real fl-client with a bundle; return its last line and Errors."""
    certs = tmp_path / "certs"
    provision(certs, 50000 + JOB, "silo,peer-1,peer-2")
    server = load_server_bundle(certs / "server")
    credentials = grpc.ssl_server_credentials([(server.private_key, server.certificate_chain)])
    trust = Trust.from_pem(server.root_certificates)
    daemons.insecure = False
    with HostileCoordinator(attack(certs, trust, how), credentials=credentials) as coordinator:
        client = start_client(
            daemons,
            coordinator.port,
            "--bundle",
            str(certs / "silo"),
            "--server",
            f"127.0.0.1:{coordinator.port}",
            "--task",
            CANARY,
        )
        code = client.wait(timeout=60)
        line = client.stderr.read_text().strip().splitlines()[-1]
        codes = error_codes(coordinator)
    assert code == 1, client.tail()
    assert line.startswith("fl-client: error: ") and "secure aggregation" in line, line
    return line, codes


def test_a_substituted_public_key_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    line, codes = run_attack(daemons, tmp_path, "substitute_key")
    assert "signature" in line, line
    assert codes == ["SECAGG_REFUSED"]


def test_a_request_for_both_shares_of_one_peer_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    line, codes = run_attack(daemons, tmp_path, "both_shares")
    assert codes == ["SECAGG_REFUSED"]
    assert "peer 1" in line or "both" in line, line
