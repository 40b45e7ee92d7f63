"""The masked upload made on a producer thread: the same bytes, the same stages and refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedsilo.common.errors import SecAggRefusedError
from fedsilo.common.secagg import ClientStage, SecAggClient, SecAggServer
from tests.common.secagg.harness import make_clients, make_setup, share_all_keys, unsigned_config

LENGTH = 5003
CHUNK = 512


def _ready_clients(seed: int = 0) -> dict[int, SecAggClient]:
    config = unsigned_config()
    setup = make_setup(3, LENGTH)
    server = SecAggServer(setup, config, trust=None)
    clients = make_clients(setup, config, seed=seed)
    share_all_keys(server, clients)
    return clients


def _delta() -> list[np.ndarray]:
    values = (np.random.default_rng(3).standard_normal(LENGTH) * 0.1).astype(np.float32)
    return [values[i : i + 700] for i in range(0, LENGTH, 700)]


def _mask_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("secagg-mask")]


def test_chunks_made_ahead_are_the_bytes_made_in_turn() -> None:
    in_turn = _ready_clients()[1].masked_input(_delta(), norm=2.0, weight=3, chunk_words=CHUNK)
    client = _ready_clients()[1]  # the same seeds: the same keys and masks
    ahead = list(client.masked_input(_delta(), norm=2.0, weight=3, chunk_words=CHUNK, ahead=2))
    assert ahead == list(in_turn)
    assert len(ahead) == -(-(LENGTH + 1) // CHUNK)
    assert client.stage is ClientStage.UNMASK
    assert not _mask_threads()


def test_the_stage_moves_on_only_once_the_last_chunk_is_taken() -> None:
    client = _ready_clients()[0]
    chunks = client.masked_input(_delta(), norm=2.0, weight=3, chunk_words=CHUNK, ahead=4)
    expected = -(-(LENGTH + 1) // CHUNK)
    for _ in range(expected - 1):
        next(chunks)
    assert client.stage is ClientStage.FAILED  # an upload left here is unfinished
    next(chunks)
    with pytest.raises(StopIteration):
        next(chunks)
    assert client.stage is ClientStage.UNMASK


def test_an_upload_given_up_midway_stops_its_thread_and_unmasks_nothing() -> None:
    client = _ready_clients()[0]
    chunks = client.masked_input(_delta(), norm=2.0, weight=3, chunk_words=CHUNK, ahead=2)
    next(chunks)
    chunks.close()
    assert not _mask_threads()
    assert client.stage is ClientStage.FAILED


def test_a_refusal_on_the_producer_thread_reaches_the_consumer() -> None:
    client = _ready_clients()[2]
    too_long = [*_delta(), np.zeros(3, dtype=np.float32)]
    with pytest.raises(SecAggRefusedError, match=f"more than {LENGTH} values"):
        list(client.masked_input(too_long, norm=2.0, weight=3, chunk_words=CHUNK, ahead=2))
    assert client.stage is ClientStage.FAILED
    assert not _mask_threads()


def test_an_upload_of_one_chunk_is_made_in_turn_without_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _ready_clients()[0]
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    chunks = client.masked_input(_delta(), norm=2.0, weight=3, chunk_words=LENGTH + 1, ahead=2)
    assert len(list(chunks)) == 1
    assert not [name for name in started if name.startswith("secagg-mask")]
    assert client.stage is ClientStage.UNMASK
