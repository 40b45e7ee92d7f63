"""A 256 MiB model's update goes through masking and the masked sum in O(chunk) memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np

from fedsilo.common.secagg import Quantizer, SecAggServer
from fedsilo.common.secagg.masks import DEFAULT_CHUNK_WORDS
from tests.common.secagg.harness import make_clients, make_setup, unsigned_config

LENGTH = 1 << 26  # float32 elements of a 256 MiB model
MIB = 1 << 20
CHUNK = DEFAULT_CHUNK_WORDS  # 1 MiB of words


def pieces(client: int) -> Iterator[np.ndarray]:
    """The client's delta, produced a chunk at a time and never held whole."""
    ramp = np.linspace(-1.0, 1.0, CHUNK, dtype=np.float32) * 1e-5
    for index in range(LENGTH // CHUNK):
        yield ramp * ((client + index) % 7 - 3)


def test_a_256_mib_update_is_masked_and_summed_chunk_by_chunk() -> None:
    config = unsigned_config()
    setup = make_setup(3, LENGTH)
    norm = 1.0  # below the clip norm, so no clip: the expected sum below needs no norm pass
    overall = 0  # the highest traced memory over the whole round
    tracemalloc.start()
    try:
        server = SecAggServer(setup, config, trust=None)
        clients = make_clients(setup, config)
        for client in clients.values():
            server.receive_advert(client.advertise())
        for c, roster in server.close_adverts().items():
            server.receive_shares(clients[c].share_keys(roster))
        routed = server.close_shares()  # allocates the running sum
        for c, shares in routed.items():
            clients[c].receive_shares(shares)
            upload = server.begin_upload(c)
            overall = max(overall, tracemalloc.get_traced_memory()[1])
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            for chunk in clients[c].masked_input(pieces(c), norm=norm, weight=5 + c):
                upload.add(chunk)
            upload.finish()
            # The client side: a chunk of words, its masked bytes, float64 scratch; no model.
            client_peak = tracemalloc.get_traced_memory()[1] - base
            assert client_peak < 16 * MIB, client_peak / MIB
        for c, request in server.close_uploads().items():
            server.receive_unmask(clients[c].unmask(request))
        overall = max(overall, tracemalloc.get_traced_memory()[1])
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = server.finish()
        unmask_peak = tracemalloc.get_traced_memory()[1] - base
        overall = max(overall, tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert unmask_peak < 8 * MIB, unmask_peak / MIB  # masks removed in place, a chunk at a time
    sum_bytes = 4 * (LENGTH + 1)
    assert sum_bytes <= overall < sum_bytes + 24 * MIB, overall / MIB  # the sum + O(chunk)

    quantizer = Quantizer.for_round(config, 3)
    words = result.model_words
    ramp = np.linspace(-1.0, 1.0, CHUNK, dtype=np.float32) * 1e-5
    for index in range(0, LENGTH // CHUNK, 7):  # every 7th chunk: all seven patterns, cheaply
        expected = sum(
            quantizer.encode(ramp * ((c + index) % 7 - 3), 1.0, 5 + c)
            .view(np.int32)
            .astype(np.int64)
            for c in range(3)
        )
        assert np.array_equal(words[index * CHUNK : (index + 1) * CHUNK], expected), index
    assert result.weight_sum == 5 + 6 + 7
