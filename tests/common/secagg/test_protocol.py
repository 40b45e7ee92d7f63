"""Whole attempts, clients and server in one process: exact sums, dropouts at every stage."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.common.errors import SecAggError
from fedsilo.common.secagg import GraphKind, Quantizer, SecAggServer, make_plan
from fedsilo.common.secagg.keys import graph_seed, round_digest
from tests.common.secagg.harness import (
    Drops,
    expected_words,
    make_inputs,
    make_setup,
    run_round,
    unsigned_config,
)

LENGTH = 3000
CHUNK = 512  # several chunks per upload, the last one partial


def config_for(n: int):
    """The default threat model for small rounds; for 50, one under which SecAgg+ is sparse."""
    if n < 50:
        return unsigned_config()
    return unsigned_config(corrupt_fraction=0.05, dropout_fraction=0.05)  # k = 10, t = 7


@pytest.mark.parametrize(
    ("n", "kind"), [(3, GraphKind.FULL), (10, GraphKind.FULL), (50, GraphKind.SPARSE)]
)
def test_unmasked_sum_is_the_exact_sum_of_quantized_inputs(n, kind) -> None:
    config = config_for(n)
    setup = make_setup(n, LENGTH)
    seed = graph_seed(round_digest(setup, config))
    plan = make_plan(setup.participants, n, seed, config.threat)
    assert plan.kind is kind
    inputs = make_inputs(n, LENGTH, seed=n)
    result = run_round(setup, config, inputs, chunk_words=CHUNK)
    quantizer = Quantizer.for_round(config, n)
    assert result.survivors == tuple(range(n))
    assert np.array_equal(result.model_words, expected_words(quantizer, inputs, list(range(n))))
    assert result.weight_sum == sum(weight for _, weight in inputs.values())


@pytest.mark.parametrize("n", [3, 10, 50])
def test_decoded_mean_is_within_the_stated_bound_of_the_plain_weighted_mean(n) -> None:
    config = config_for(n)
    inputs = make_inputs(n, LENGTH, seed=100 + n)
    result = run_round(make_setup(n, LENGTH), config, inputs, chunk_words=CHUNK)
    weights = sum(w for _, w in inputs.values())
    plain = sum(delta.astype(np.float64) * w for delta, w in inputs.values()) / weights
    error = np.abs(result.mean() - plain).max()
    # Bound: n / (2 s sum(w)); here s = floor((2^31-1)/n) / (1000 * 4.0).
    quantizer = Quantizer.for_round(config, n)
    assert result.error_bound() == pytest.approx(n / (2 * quantizer.scale * weights))
    assert error <= result.error_bound() * (1 + 1e-9)
    assert error > 0  # the comparison is with the float mean, not with itself


def test_chunked_means_equal_the_whole_mean() -> None:
    config = unsigned_config()
    result = run_round(make_setup(4, LENGTH), config, make_inputs(4, LENGTH), chunk_words=CHUNK)
    assert np.array_equal(np.concatenate(list(result.mean_chunks(700))), result.mean())


@pytest.mark.parametrize(
    "stage",
    [
        "before_advert",
        "before_shares",
        "before_upload",
        "mid_upload",
        "after_upload",
        "during_unmask",
    ],
)
@pytest.mark.parametrize("n", [10, 50])
def test_dropouts_at_each_stage_leave_the_survivors_sum(stage, n) -> None:
    config = config_for(n)
    inputs = make_inputs(n, LENGTH, seed=7)
    gone = {1, 4} if n == 10 else {1, 17, 33}  # 50: ceil(0.05 * 50) = 3 dropouts assumed
    result = run_round(
        make_setup(n, LENGTH), config, inputs, drops=Drops({stage: gone}), chunk_words=CHUNK
    )
    in_sum = gone if stage in ("after_upload", "during_unmask") else set()
    survivors = sorted(set(range(n)) - gone | in_sum)
    assert list(result.survivors) == survivors
    quantizer = Quantizer.for_round(config, n)
    assert np.array_equal(result.model_words, expected_words(quantizer, inputs, survivors))
    assert result.weight_sum == sum(inputs[c][1] for c in survivors)


def test_dropouts_at_all_stages_at_once_leave_the_survivors_sum() -> None:
    config = unsigned_config()
    inputs = make_inputs(10, LENGTH, seed=3)
    drops = Drops({"before_shares": {0}, "before_upload": {3}, "during_unmask": {9}})
    result = run_round(make_setup(10, LENGTH), config, inputs, drops=drops, chunk_words=CHUNK)
    survivors = [1, 2, 4, 5, 6, 7, 8, 9]
    assert list(result.survivors) == survivors
    assert result.dropped == (0, 3)
    quantizer = Quantizer.for_round(config, 10)
    assert np.array_equal(result.model_words, expected_words(quantizer, inputs, survivors))


# Full graph of 10 with corrupt_fraction 0.1: c = 1, t = (10 + 1) // 2 + 1 = 6; 5 gone leaves 5.
@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("before_advert", "5 clients advertised keys, 6 needed"),
        ("before_shares", "shares reached 5 live holders, 6 are needed"),
        ("before_upload", "has 5 live holders, 6 needed: too few clients left"),
        ("during_unmask", "has 5 live holders, 6 needed: too few clients left"),
    ],
)
def test_fewer_than_t_clients_left_is_a_clear_failure(stage, message) -> None:
    config = unsigned_config(corrupt_fraction=0.1)
    drops = Drops({stage: {0, 2, 4, 6, 8}})
    with pytest.raises(SecAggError, match=message):
        run_round(make_setup(10, LENGTH), config, make_inputs(10, LENGTH), drops=drops)


def test_exactly_t_clients_left_still_complete() -> None:
    config = unsigned_config(corrupt_fraction=0.1)
    drops = Drops({"during_unmask": {0, 2, 4, 6}})  # 6 answer, t = 6
    result = run_round(make_setup(10, LENGTH), config, make_inputs(10, LENGTH), drops=drops)
    assert result.survivors == tuple(range(10))


def test_an_upload_cut_off_without_a_copy_makes_the_attempt_fail_clearly() -> None:
    config = unsigned_config()
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, config, trust=None)
    from tests.common.secagg.harness import make_clients, share_all_keys

    clients = make_clients(setup, config)
    share_all_keys(server, clients)
    delta = np.zeros(LENGTH, dtype=np.float32)
    upload = server.begin_upload(0)
    upload.add(next(clients[0].masked_input([delta], norm=0.0, weight=1, chunk_words=CHUNK)))
    server.drop(0)
    with pytest.raises(
        SecAggError, match=r"broke off after 512 of 3001 words.*run the round again"
    ):
        server.close_uploads()


def test_a_round_run_again_uses_new_masks_for_the_same_update() -> None:
    config = unsigned_config()
    inputs = make_inputs(3, LENGTH)
    seen = []
    for attempt, seed in [(b"\x01" * 16, 0), (b"\x02" * 16, 0), (b"\x01" * 16, 1)]:
        uploads: dict[int, bytes] = {}
        setup = make_setup(3, LENGTH, round_number=5, attempt=attempt)
        run_round(setup, config, inputs, seed=seed, uploads_seen=uploads)
        seen.append(uploads[0])
    # A new attempt nonce alone (same randomness) and fresh randomness alone (same nonce) each
    # change every part of the upload.
    words = [np.frombuffer(u, dtype="<u4") for u in seen]
    assert np.mean(words[0] == words[1]) < 0.01
    assert np.mean(words[0] == words[2]) < 0.01


def test_uploads_arrive_in_any_order_and_interleaved_chunks_give_the_same_sum() -> None:
    config = unsigned_config()
    setup = make_setup(4, LENGTH)
    inputs = make_inputs(4, LENGTH)
    from tests.common.secagg.harness import make_clients

    results = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        server = SecAggServer(setup, config, trust=None)
        clients = make_clients(setup, config)
        for client in clients.values():
            server.receive_advert(client.advertise())
        for c, roster in server.close_adverts().items():
            server.receive_shares(clients[c].share_keys(roster))
        streams = {}
        for c, routed in server.close_shares().items():
            clients[c].receive_shares(routed)
            delta, weight = inputs[c]
            norm = float(np.linalg.norm(delta.astype(np.float64)))
            streams[c] = (
                server.begin_upload(c),
                clients[c].masked_input([delta], norm=norm, weight=weight, chunk_words=CHUNK),
            )
        pending = list(order)
        while pending:  # round-robin over the uploads, one chunk each
            for c in list(pending):
                upload, chunks = streams[c]
                chunk = next(chunks, None)
                if chunk is None:
                    upload.finish()
                    pending.remove(c)
                else:
                    upload.add(chunk)
        for c, request in server.close_uploads().items():
            server.receive_unmask(clients[c].unmask(request))
        results.append(server.finish().words.copy())
    assert np.array_equal(results[0], results[1])
