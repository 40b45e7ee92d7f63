"""Folding an update as it streams gives the bits of folding it whole, and a refused one leaves
no trace in the sum."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from fedsilo.server.aggregation import OrderedFold, StreamedFold
from fedsilo.server.fold_sink import FoldSink
from fedsilo.server.strategies import fedavg
from tests.server.test_aggregation import CLIENTS, LIKE, WEIGHTS, assert_identical, random_updates

LIMIT = 1e30


def stream_in(
    fold: OrderedFold,
    cid: int,
    update: dict[str, torch.Tensor],
    chunk_size: int = 7,
    reference: dict[str, torch.Tensor] | None = None,
) -> tuple[StreamedFold, FoldSink]:
    """Fold ``update`` as a stream cut into ``chunk_size``-byte chunks; return it and its sink."""
    stream = fold.begin_stream(cid, WEIGHTS.get(cid, 1.0))
    specs = specs_of(update)
    sink = FoldSink(
        specs, stream, max_chunk_size=chunk_size, magnitude_limit=LIMIT, reference=reference
    )
    decoder = TensorStreamDecoder(specs, max_chunk_size=chunk_size, sink=sink)
    encoder = TensorStreamEncoder(list(update.values()), chunk_size)
    for parts in encoder:
        decoder.feed(b"".join(parts))
    decoder.finish(encoder.checksum)
    return stream, sink


def reference_mean(updates: dict[int, dict[str, torch.Tensor]], clients: list[int]):
    ordered = sorted(clients)
    return fedavg.aggregate([updates[c] for c in ordered], [WEIGHTS[c] for c in ordered])


@pytest.mark.parametrize("chunk_size", [7, 64, 1 << 20])
def test_a_fold_of_streams_equals_the_whole_fold(chunk_size: int) -> None:
    updates = random_updates(seed=5)
    fold = OrderedFold(expected=CLIENTS, like=LIKE)
    for cid in sorted(CLIENTS):  # each one's turn comes before it streams
        stream, _ = stream_in(fold, cid, updates[cid], chunk_size)
        assert fold.streaming
        fold.commit_stream(stream)
    assert_identical(fold.mean(), reference_mean(updates, CLIENTS))


def test_streams_and_held_updates_mixed_in_every_order_give_the_same_bits() -> None:
    updates = random_updates(seed=8)
    want = reference_mean(updates, CLIENTS)
    ordered = sorted(CLIENTS)
    for pattern in itertools.product([True, False], repeat=len(CLIENTS)):
        fold = OrderedFold(expected=CLIENTS, like=LIKE)
        streamed = dict(zip(ordered, pattern, strict=True))
        # Held ones arrive first (out of turn, in reverse), streams when their turn comes.
        for cid in reversed(ordered):
            if not streamed[cid]:
                fold.submit(cid, WEIGHTS[cid], {k: v.clone() for k, v in updates[cid].items()})
        for cid in ordered:
            if streamed[cid] and fold.can_stream(cid):
                stream, _ = stream_in(fold, cid, updates[cid])
                fold.commit_stream(stream)
            elif streamed[cid]:  # not its turn yet (a held one before it is missing): hold it
                fold.submit(cid, WEIGHTS[cid], {k: v.clone() for k, v in updates[cid].items()})
        assert fold.complete, pattern
        assert_identical(fold.mean(), want)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8]
)
def test_elements_cut_by_chunk_boundaries_are_read_whole(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    values = (torch.randn(101, generator=generator) * 50).to(dtype)
    like = {"x": torch.zeros(101, dtype=dtype), "y": torch.zeros(3)}
    update = {"x": values, "y": torch.tensor([1.0, 2.0, 3.0])}
    fold = OrderedFold(expected=[0, 1], like=like)
    stream, _ = stream_in(fold, 0, update, chunk_size=5)  # 5 bytes: 2- and 8-byte elements cut
    fold.commit_stream(stream)
    fold.submit(1, 1.0, {k: v.clone() for k, v in update.items()})
    want = fedavg.aggregate([update, update], [1.0, 1.0])
    assert_identical(fold.mean(), want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e38])
def test_a_stream_with_a_bad_value_is_refused_and_the_sum_is_as_before(bad: float) -> None:
    updates = random_updates(seed=2)
    first, second, third = sorted(CLIENTS)[:3]
    fold = OrderedFold(expected=[first, second, third], like=LIKE)
    stream, _ = stream_in(fold, first, updates[first])
    fold.commit_stream(stream)
    poisoned = {k: v.clone() for k, v in updates[second].items()}
    poisoned["w"][40] = bad  # past the first chunks: earlier blocks were already folded
    with pytest.raises(CodecError, match="NaN or infinite"):
        stream_in(fold, second, poisoned)
    fold.drop([second])  # the intake drops a refused client, which abandons its stream
    stream, _ = stream_in(fold, third, updates[third])
    fold.commit_stream(stream)
    assert_identical(fold.mean(), reference_mean(updates, [first, third]))


def test_the_norm_a_stream_measures_is_the_norm_of_the_whole_update() -> None:
    updates = random_updates(seed=4)
    cid = sorted(CLIENTS)[0]
    reference = {k: v * 0.5 for k, v in updates[cid].items()}
    fold = OrderedFold(expected=[cid], like=LIKE)
    _, sink = stream_in(fold, cid, updates[cid], chunk_size=11, reference=reference)
    want = sum(float(((updates[cid][k].double() - reference[k].double()) ** 2).sum()) for k in LIKE)
    assert sink.norm_squared == pytest.approx(want, rel=1e-12)


def test_a_stream_can_only_begin_in_turn_and_one_at_a_time() -> None:
    fold = OrderedFold(expected=[1, 2], like=LIKE)
    assert not fold.can_stream(2)
    with pytest.raises(ValueError, match="cannot be streamed"):
        fold.begin_stream(2, 1.0)
    fold.begin_stream(1, 1.0)
    assert not fold.can_stream(1)  # already streaming


def test_a_dropped_streaming_client_stops_writing_and_its_buffer_is_reused() -> None:
    a, b = sorted(CLIENTS)[:2]
    fold = OrderedFold(expected=[a, b], like=LIKE)
    stream = fold.begin_stream(a, 1.0)
    target = stream.target
    for buffer in target.values():
        buffer.fill_(7.0)  # torch.empty memory may hold NaN, which no torch.equal matches
    fold.drop([a])  # e.g. its round timed out mid-stream
    assert not fold.streaming
    before = {k: v.clone() for k, v in target.items()}
    stream.add("w", 0, torch.ones(64))  # a late block from the reader thread: a no-op
    assert all(torch.equal(before[k], target[k]) for k in target)
    again = fold.begin_stream(b, 1.0)
    assert again.target is target  # the same memory serves the next stream
