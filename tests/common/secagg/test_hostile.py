"""A server (or peer) that lies: substituted keys, foreign certificates, greedy unmask requests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedsilo.common.bundles import load_client_bundle
from fedsilo.common.errors import ConfigError, SecAggError, SecAggRefusedError
from fedsilo.common.secagg import (
    Identity,
    Quantizer,
    RoundSetup,
    RoutedShares,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Trust,
    UnmaskLedger,
    UnmaskRequest,
)
from fedsilo.common.secagg.messages import EncryptedShare
from fedsilo.provision import certs
from fedsilo.provision.cli import init_federation
from tests.common.secagg.harness import (
    expected_words,
    make_clients,
    make_inputs,
    make_setup,
    run_round,
    seeded_entropy,
)

LENGTH = 200
SIGNED = SecAggConfig(clip_norm=4.0, max_weight=1000)


def test_a_signed_round_gives_the_exact_sum(federation) -> None:
    inputs = make_inputs(5, LENGTH)
    signing = (federation.identities, federation.trust)
    result = run_round(make_setup(5, LENGTH), SIGNED, inputs, signing=signing)
    quantizer = Quantizer.for_round(SIGNED, 5)
    assert np.array_equal(result.model_words, expected_words(quantizer, inputs, list(range(5))))


def test_keys_signed_with_a_bundle_written_by_fl_certs_verify(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    init_federation(out, ["fl.example.org"], ["org-a", "org-b", "org-c"], job_id=3)
    bundles = [load_client_bundle(out / org) for org in ("org-a", "org-b", "org-c")]
    identities = {c: Identity.from_bundle(bundle) for c, bundle in enumerate(bundles)}
    trust = Trust.from_pem(bundles[0].root_certificates)
    inputs = make_inputs(3, LENGTH)
    result = run_round(make_setup(3, LENGTH), SIGNED, inputs, signing=(identities, trust))
    assert result.survivors == (0, 1, 2)


def test_signed_mode_needs_a_certificate_and_the_ca(federation) -> None:
    with pytest.raises(ConfigError, match="a certificate and the CA are needed"):
        SecAggClient(make_setup(3, LENGTH), 0, SIGNED, identity=None, trust=federation.trust)
    with pytest.raises(ConfigError, match="the CA is needed"):
        SecAggServer(make_setup(3, LENGTH), SIGNED, trust=None)


def _advertised(federation, n=4, identities=None):
    setup = make_setup(n, LENGTH)
    clients = make_clients(setup, SIGNED, identities or federation.identities, federation.trust)
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    for client in clients.values():
        server.receive_advert(client.advertise())
    return setup, server, clients, server.close_adverts()


def _swap_advert(roster, client, **changes):
    adverts = tuple(
        dataclasses.replace(a, **changes) if a.client_id == client else a for a in roster.adverts
    )
    return dataclasses.replace(roster, adverts=adverts)


@pytest.mark.parametrize("field", ["mask_key", "cipher_key", "self_mask_commitment"])
def test_a_substituted_public_key_is_refused_by_the_peer(federation, field) -> None:
    _, _, clients, rosters = _advertised(federation)
    forged = _swap_advert(rosters[0], 2, **{field: bytes(range(32))})  # the server's own key
    with pytest.raises(SecAggRefusedError, match=r"client 2 .*do not match its signature"):
        clients[0].share_keys(forged)


def test_the_server_refuses_a_tampered_advert_before_routing_it(federation) -> None:
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    advert = make_clients(setup, SIGNED, federation.identities, federation.trust)[1].advertise()
    with pytest.raises(SecAggRefusedError, match="do not match its signature"):
        server.receive_advert(dataclasses.replace(advert, mask_key=bytes(32)))


def test_a_certificate_of_another_name_is_refused(federation) -> None:
    impostor = federation.identities[5]  # org-5's key and certificate ...
    identities = dict(federation.identities)
    identities[1] = Identity("org-1", impostor.private_key, impostor.certificate)  # ... as org-1
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    advert = make_clients(setup, SIGNED, identities, federation.trust)[1].advertise()
    with pytest.raises(SecAggRefusedError, match="certificate of 'org-5', not its own"):
        server.receive_advert(advert)


def test_a_certificate_of_another_federation_is_refused(federation) -> None:
    other_key, other_ca = certs.make_ca(days=30)
    key, cert = certs.make_client_cert(other_key, other_ca, "org-1", 30)
    identities = dict(federation.identities)
    identities[1] = Identity("org-1", key, certs.certificate_pem(cert))
    setup = make_setup(3, LENGTH)
    advert = make_clients(setup, SIGNED, identities, federation.trust)[1].advertise()
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    with pytest.raises(
        SecAggRefusedError, match="not a valid client certificate of this federation"
    ):
        server.receive_advert(advert)


def test_a_server_certificate_cannot_sign_client_keys(federation) -> None:
    key, cert = certs.make_server_cert(federation.ca_key, federation.ca_cert, ["org-1"], 30)
    identities = dict(federation.identities)
    identities[1] = Identity("org-1", key, certs.certificate_pem(cert))
    setup = make_setup(3, LENGTH)
    advert = make_clients(setup, SIGNED, identities, federation.trust)[1].advertise()
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    with pytest.raises(SecAggRefusedError, match="not a valid client certificate"):
        server.receive_advert(advert)


def test_unsigned_keys_are_refused_when_the_job_signs(federation) -> None:
    setup = make_setup(3, LENGTH)
    advert = make_clients(setup, SIGNED, federation.identities, federation.trust)[0].advertise()
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    with pytest.raises(SecAggRefusedError, match="unsigned keys; this job requires signed keys"):
        server.receive_advert(dataclasses.replace(advert, signature=b"", certificate=b""))


def test_keys_signed_for_another_attempt_are_refused(federation) -> None:
    old = make_setup(3, LENGTH, attempt=b"\x09" * 16)
    advert = make_clients(old, SIGNED, federation.identities, federation.trust)[0].advertise()
    server = SecAggServer(make_setup(3, LENGTH), SIGNED, trust=federation.trust)
    with pytest.raises(SecAggRefusedError, match="for another job, round, attempt or settings"):
        server.receive_advert(advert)
    # Relabelled with this attempt's digest, the old signature no longer verifies.
    relabelled = dataclasses.replace(advert, round_digest=server.digest)
    with pytest.raises(SecAggRefusedError, match="do not match its signature"):
        server.receive_advert(relabelled)


def test_a_roster_that_swaps_this_clients_own_keys_is_refused(federation) -> None:
    _, _, clients, rosters = _advertised(federation)
    other = rosters[0].adverts[1]
    forged = dataclasses.replace(
        rosters[0], adverts=(dataclasses.replace(other, client_id=0), *rosters[0].adverts[1:])
    )
    with pytest.raises(SecAggRefusedError, match="other keys under this client's id"):
        clients[0].share_keys(forged)


def test_two_clients_with_one_name_are_refused(federation) -> None:
    setup = make_setup(3, LENGTH)
    identities = dict(federation.identities)
    identities[2] = federation.identities[1]
    clients = make_clients(setup, SIGNED, identities, federation.trust)
    server = SecAggServer(setup, SIGNED, trust=federation.trust)
    server.receive_advert(clients[1].advertise())
    with pytest.raises(SecAggRefusedError, match="'org-1' advertised by two clients"):
        server.receive_advert(clients[2].advertise())


def _at_unmask(n=5, ledger=None, attempt=b"\x01" * 16, config=None):
    """Run an unsigned attempt up to the unmask stage; return server, clients, requests."""
    config = config or SecAggConfig(clip_norm=4.0, max_weight=1000, allow_unsigned=True)
    setup = make_setup(n, LENGTH, round_number=3, attempt=attempt)
    server = SecAggServer(setup, config, trust=None)
    clients = {
        c: SecAggClient(
            setup,
            c,
            config,
            identity=None,
            trust=None,
            ledger=ledger if c == 0 else None,
            entropy=seeded_entropy(attempt[0] * 100 + c),
        )
        for c in range(n)
    }
    for client in clients.values():
        server.receive_advert(client.advertise())
    for c, roster in server.close_adverts().items():
        server.receive_shares(clients[c].share_keys(roster))
    inputs = make_inputs(n, LENGTH)
    for c, routed in server.close_shares().items():
        clients[c].receive_shares(routed)
        if c == n - 1:
            server.drop(c)  # the last one drops before uploading
            continue
        upload = server.begin_upload(c)
        delta, weight = inputs[c]
        for chunk in clients[c].masked_input(
            [delta], norm=float(np.linalg.norm(delta)), weight=weight
        ):
            upload.add(chunk)
        upload.finish()
    return server, clients, server.close_uploads()


def test_a_request_for_both_shares_of_one_peer_is_refused() -> None:
    _, clients, requests = _at_unmask()
    honest = requests[0]
    assert honest.mask_key_of == (4,)
    greedy = UnmaskRequest(honest.self_mask_of, (*honest.mask_key_of, 2))
    with pytest.raises(SecAggRefusedError, match=r"both shares of client\(s\) \[2\]"):
        clients[0].unmask(greedy)
    # A refusal ends the attempt: not even the honest request is answered afterwards.
    with pytest.raises(SecAggRefusedError, match=r"out of order .*failed"):
        clients[0].unmask(honest)


def test_the_round_completes_without_the_client_that_refused() -> None:
    server, clients, requests = _at_unmask()
    greedy = UnmaskRequest(requests[1].self_mask_of, (*requests[1].mask_key_of, 0))
    with pytest.raises(SecAggRefusedError):
        clients[1].unmask(greedy)
    server.drop(1)
    for c, request in requests.items():
        if c != 1:
            server.receive_unmask(clients[c].unmask(request))
    assert server.finish().survivors == (0, 1, 2, 3)  # 1's upload counts: 3 answers >= t = 3


def test_a_second_unmask_request_in_one_attempt_is_refused() -> None:
    _, clients, requests = _at_unmask()
    clients[0].unmask(requests[0])
    swapped = UnmaskRequest((0, 1, 2, 3, 4)[:-1], (4,))
    with pytest.raises(SecAggRefusedError, match="out of order"):
        clients[0].unmask(swapped)


def test_a_request_for_this_clients_own_mask_key_is_refused() -> None:
    _, clients, requests = _at_unmask()
    own = UnmaskRequest((1, 2, 3), (0, 4))
    with pytest.raises(SecAggRefusedError, match="this client's own mask key"):
        clients[0].unmask(own)
    assert 0 in requests[0].self_mask_of


def test_a_request_that_leaves_out_a_peer_is_refused() -> None:
    _, clients, _ = _at_unmask()
    partial = UnmaskRequest((0, 1, 2), (4,))  # 3 uploaded but is named in neither set
    with pytest.raises(SecAggRefusedError, match="not the clients whose shares"):
        clients[0].unmask(partial)


def test_a_request_naming_fewer_survivors_than_t_is_refused() -> None:
    _, clients, _ = _at_unmask()
    # Full graph of 5, corrupt_fraction 0.1: c = 0, t = 3; two survivors named.
    few = UnmaskRequest((0, 1), (2, 3, 4))
    with pytest.raises(SecAggRefusedError, match="only 2 survivors"):
        clients[0].unmask(few)


def test_a_round_run_again_is_answered_only_with_the_same_survivors() -> None:
    ledger = UnmaskLedger()
    _, clients, requests = _at_unmask(ledger=ledger, attempt=b"\x01" * 16)
    clients[0].unmask(requests[0])
    # The same round, a new attempt: same survivors is fine (the same sum again) ...
    _, again, requests_again = _at_unmask(ledger=ledger, attempt=b"\x02" * 16)
    again[0].unmask(requests_again[0])
    # ... but a third attempt that leaves client 1 out would reveal client 1's update.
    _, third, _ = _at_unmask(ledger=ledger, attempt=b"\x03" * 16)
    with pytest.raises(SecAggRefusedError, match="unmasked before with other survivors"):
        third[0].unmask(UnmaskRequest((0, 2, 3), (1, 4)))


def _at_receive():
    config = SecAggConfig(clip_norm=4.0, max_weight=1000, allow_unsigned=True)
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, config, trust=None)
    clients = make_clients(setup, config)
    for client in clients.values():
        server.receive_advert(client.advertise())
    for c, roster in server.close_adverts().items():
        server.receive_shares(clients[c].share_keys(roster))
    return clients[0], server.close_shares()[0]


def test_a_tampered_share_is_refused() -> None:
    client, routed = _at_receive()
    share = routed.shares[0]
    flipped = bytes([share.ciphertext[0] ^ 1]) + share.ciphertext[1:]
    tampered = RoutedShares(0, (dataclasses.replace(share, ciphertext=flipped), *routed.shares[1:]))
    with pytest.raises(SecAggRefusedError, match=f"from client {share.sender} does not decrypt"):
        client.receive_shares(tampered)


def test_a_share_relabelled_for_another_client_is_refused() -> None:
    client, routed = _at_receive()
    share = routed.shares[0]
    relabelled = EncryptedShare(share.sender, 2, share.nonce, share.ciphertext)
    with pytest.raises(SecAggRefusedError, match="for client 2 was routed here"):
        client.receive_shares(RoutedShares(0, (relabelled,)))


def test_a_share_replayed_from_another_sender_does_not_decrypt() -> None:
    client, routed = _at_receive()
    first, second = routed.shares
    swapped = EncryptedShare(second.sender, 0, first.nonce, first.ciphertext)
    with pytest.raises(SecAggRefusedError, match="does not decrypt"):
        client.receive_shares(RoutedShares(0, (swapped, first)))


def test_revealed_shares_other_than_asked_are_refused() -> None:
    server, clients, requests = _at_unmask()
    response = clients[0].unmask(requests[0])
    extra = dataclasses.replace(
        response, mask_key_shares={**response.mask_key_shares, 1: b"\x00" * 66}
    )
    with pytest.raises(SecAggRefusedError, match="revealed other shares than asked"):
        server.receive_unmask(extra)


def _nudged(share: bytes) -> bytes:
    return (int.from_bytes(share, "big") + 1).to_bytes(len(share), "big")


def test_a_corrupt_self_mask_share_is_caught_by_the_commitment() -> None:
    server, clients, requests = _at_unmask()
    for c, request in requests.items():
        response = clients[c].unmask(request)
        if c == 0:  # the lowest holder: its share is among the t used
            shares = {**response.self_mask_shares, 1: _nudged(response.self_mask_shares[1])}
            response = dataclasses.replace(response, self_mask_shares=shares)
        server.receive_unmask(response)
    with pytest.raises(SecAggError, match="client 1's self-mask shares do not rebuild its seed"):
        server.finish()


def test_a_corrupt_mask_key_share_is_caught_by_the_advertised_key() -> None:
    server, clients, requests = _at_unmask()
    for c, request in requests.items():
        response = clients[c].unmask(request)
        if c == 0:
            shares = {4: _nudged(response.mask_key_shares[4])}
            response = dataclasses.replace(response, mask_key_shares=shares)
        server.receive_unmask(response)
    with pytest.raises(SecAggError, match="dropped client 4's shares do not rebuild its mask key"):
        server.finish()


def test_shares_of_the_wrong_size_are_refused_by_the_server() -> None:
    config = SecAggConfig(clip_norm=4.0, max_weight=1000, allow_unsigned=True)
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, config, trust=None)
    clients = make_clients(setup, config)
    for client in clients.values():
        server.receive_advert(client.advertise())
    roster = server.close_adverts()[0]
    shares = clients[0].share_keys(roster)
    padded = dataclasses.replace(shares.shares[0], ciphertext=shares.shares[0].ciphertext + b"x")
    with pytest.raises(SecAggRefusedError, match="a share of the wrong size"):
        server.receive_shares(dataclasses.replace(shares, shares=(padded, *shares.shares[1:])))
    with pytest.raises(SecAggRefusedError, match="not to its neighbours"):
        server.receive_shares(dataclasses.replace(shares, shares=shares.shares[:1]))


def test_the_server_finishes_once() -> None:
    server, clients, requests = _at_unmask()
    for c, request in requests.items():
        server.receive_unmask(clients[c].unmask(request))
    server.finish()
    with pytest.raises(SecAggRefusedError, match="out of order"):
        server.finish()


@pytest.mark.parametrize(
    "setup",
    [
        RoundSetup(1, 1, b"\x01" * 15, (0, 1), 10),
        RoundSetup(1, 1, b"\x01" * 16, (0, 0, 1), 10),
        RoundSetup(-1, 1, b"\x01" * 16, (0, 1), 10),
    ],
)
def test_a_malformed_round_setup_is_refused(setup) -> None:
    config = SecAggConfig(clip_norm=4.0, max_weight=1000, allow_unsigned=True)
    with pytest.raises(SecAggRefusedError):
        SecAggClient(setup, 0, config, identity=None, trust=None)
