"""Uploads out of turn spill to disk; folding spilled, owned updates stays bit-identical."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.specs import specs_from_header
from fedsilo.server import spill, uploads
from fedsilo.server.aggregation import OrderedFold
from fedsilo.server.spill import BLOCK_BYTES, SpilledTensors, tensor_blocks
from fedsilo.server.strategies import fedavg
from fedsilo.server.uploads import UploadStore
from fedsilo.server.validation import ClippedUpdate, check_finite
from tests.server.test_aggregation import CLIENTS, LIKE, WEIGHTS, assert_identical, random_updates
from tests.wire_helpers import encode_state


@pytest.fixture(autouse=True)
def no_waiting_budget(monkeypatch):
    """Spill every out-of-turn upload, however small (the tests' updates are tiny)."""
    monkeypatch.setattr(uploads, "WAITING_IN_MEMORY_BYTES", 0)


def receive(store: UploadStore, state: dict[str, torch.Tensor], in_turn: bool, label: str):
    """Send ``state`` through a decoder of ``store`` in small chunks; return what finish gives."""
    header, chunks, checksum = encode_state(state, chunk_size=100)
    decoder = store.decoder(specs_from_header(header, 1 << 30), in_turn, label)
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder.finish(checksum)


def raw(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def spill_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spill").glob("*.upload"))


def test_an_upload_out_of_turn_goes_to_a_file_and_reads_back_bit_exact(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    state = {
        "w": torch.randn(30, 7),
        "steps": torch.tensor(11),
        "h": torch.randn(5).to(torch.bfloat16),
        "none": torch.zeros(0),
    }
    spilled = receive(store, state, in_turn=False, label="r1-c3")
    assert isinstance(spilled, SpilledTensors)
    assert [p.name for p in spill_files(tmp_path)] == ["r1-c3-0.upload"]
    assert list(spilled) == list(state)
    for name, tensor in state.items():
        assert spilled[name].dtype == tensor.dtype and spilled[name].shape == tensor.shape
        assert torch.equal(raw(spilled[name]), raw(tensor))
    store.release(spilled, reuse=True)
    assert spill_files(tmp_path) == []


def test_an_upload_in_turn_stays_in_memory_and_reuses_a_released_update(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    state = {"w": torch.randn(40)}
    first = receive(store, state, in_turn=True, label="a")
    assert isinstance(first, dict) and spill_files(tmp_path) == []
    store.release(first, reuse=True)
    second = receive(store, {"w": torch.randn(40)}, in_turn=True, label="b")
    assert second["w"].data_ptr() == first["w"].data_ptr()  # decoded into the spare buffers
    third = receive(store, state, in_turn=True, label="c")
    assert third["w"].data_ptr() != second["w"].data_ptr()  # the spare was taken once


def test_a_discarded_upload_leaves_no_file_and_clear_removes_stale_ones(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    header, chunks, _ = encode_state({"w": torch.randn(100)}, chunk_size=100)
    decoder = store.decoder(specs_from_header(header, 1 << 30), False, "x")
    decoder.feed(chunks[0])
    assert len(spill_files(tmp_path)) == 1
    decoder.discard()
    assert spill_files(tmp_path) == []
    receive(store, {"w": torch.randn(3)}, in_turn=False, label="stale")
    UploadStore(tmp_path / "spill", chunk_size=100)  # a restarted server
    assert spill_files(tmp_path) == []


def test_a_corrupted_spilled_upload_is_refused_by_its_checksum(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    header, chunks, checksum = encode_state({"w": torch.randn(50)}, chunk_size=100)
    decoder = store.decoder(specs_from_header(header, 1 << 30), False, "x")
    for chunk in chunks:
        decoder.feed(bytes(reversed(chunk)))
    with pytest.raises(CodecError, match="checksum"):
        decoder.finish(checksum)


def test_a_truncated_spill_file_is_an_error_not_garbage(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    spilled = receive(store, {"w": torch.randn(50)}, in_turn=False, label="x")
    assert isinstance(spilled, SpilledTensors)
    spilled.path.write_bytes(spilled.path.read_bytes()[:10])
    with pytest.raises(CodecError, match="ends inside"):
        spilled["w"]


def test_finite_check_and_clipping_work_on_spilled_updates(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    bad = receive(store, {"w": torch.tensor([1.0, float("nan")])}, in_turn=False, label="bad")
    with pytest.raises(CodecError, match="NaN"):
        check_finite(bad)
    bf16 = receive(
        store, {"w": torch.tensor([1.0, float("inf")]).bfloat16()}, in_turn=False, label="bf"
    )
    with pytest.raises(CodecError, match="NaN"):
        check_finite(bf16)
    good = receive(store, {"w": torch.tensor([3.0, 4.0])}, in_turn=False, label="good")
    clipped = ClippedUpdate(good, {"w": torch.zeros(2)}, 0.5)
    assert torch.equal(clipped["w"], torch.tensor([1.5, 2.0]))
    store.release(clipped, reuse=False)
    assert not Path(good.path).exists()


def owned_fold(tmp_path: Path, order, updates, spill: set[int]):
    """A fold as the server runs it: owning its updates, some of which come from spill files."""
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    released: list[bool] = []

    def release(tensors, reuse: bool) -> None:
        released.append(reuse)
        store.release(tensors, reuse)

    fold = OrderedFold(expected=list(CLIENTS), like=LIKE, release=release)
    for cid in order:
        if cid in spill:
            tensors = receive(store, updates[cid], in_turn=False, label=f"c{cid}")
        else:
            tensors = {name: t.clone() for name, t in updates[cid].items()}
        fold.submit(cid, WEIGHTS[cid], tensors)
    assert fold.complete
    assert released == [False, True, True, True]  # the first update became the sum
    assert spill_files(tmp_path) == []
    return fold.mean()


@pytest.mark.parametrize("block_bytes", [BLOCK_BYTES, 20])
def test_the_owning_fold_with_spilled_updates_is_bit_identical_for_every_order(
    tmp_path: Path, monkeypatch, block_bytes: int
):
    monkeypatch.setattr(spill, "BLOCK_BYTES", block_bytes)  # 20: many blocks per tensor
    updates = random_updates(seed=3)
    reference = fedavg.aggregate(
        [updates[c] for c in sorted(CLIENTS)], [WEIGHTS[c] for c in sorted(CLIENTS)]
    )
    for number, order in enumerate(itertools.permutations(CLIENTS)):
        spilled = {cid for position, cid in enumerate(order) if (number >> position) & 1}
        assert_identical(owned_fold(tmp_path, order, updates, spilled), reference)


def test_the_owning_fold_scales_the_first_update_in_place(tmp_path: Path):
    fold = OrderedFold(expected=[0, 1], like={"w": torch.zeros(3)}, release=lambda t, r: None)
    first = {"w": torch.tensor([1.0, 2.0, 3.0])}
    fold.submit(0, 2.0, first)
    fold.submit(1, 2.0, {"w": torch.tensor([3.0, 2.0, 1.0])})
    mean = fold.mean()
    assert torch.equal(mean["w"], torch.tensor([2.0, 2.0, 2.0]))
    assert mean["w"].data_ptr() == first["w"].data_ptr()  # no second model-sized buffer
    assert fold.mean() is mean  # the sum was used up once; asking again gives the same mean


def test_blocks_of_a_spilled_tensor_cover_it_exactly(tmp_path: Path):
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    state = {"a": torch.randn(37), "b": torch.arange(10, dtype=torch.int16), "c": torch.zeros(0)}
    spilled = receive(store, state, in_turn=False, label="x")
    for name, tensor in state.items():
        pieces = [(start, block.clone()) for start, block in tensor_blocks(spilled, name, 8)]
        assert [start for start, _ in pieces] == list(
            range(0, tensor.numel(), 8 // tensor.element_size())
        )
        joined = torch.cat([block for _, block in pieces]) if pieces else torch.zeros(0)
        assert torch.equal(joined, tensor.reshape(-1).to(joined.dtype))


def test_small_uploads_wait_in_memory_within_the_budget(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(uploads, "WAITING_IN_MEMORY_BYTES", 1000)
    store = UploadStore(tmp_path / "spill", chunk_size=100)
    first = receive(store, {"w": torch.randn(200)}, in_turn=False, label="a")  # 800 bytes
    second = receive(store, {"w": torch.randn(200)}, in_turn=False, label="b")  # over budget
    assert isinstance(first, dict) and isinstance(second, SpilledTensors)
    store.release(first, reuse=False)
    third = receive(store, {"w": torch.randn(200)}, in_turn=False, label="c")  # room again
    assert isinstance(third, dict)
    header, _, _ = encode_state({"w": torch.randn(200)}, chunk_size=100)
    broken = store.decoder(specs_from_header(header, 1 << 30), False, "d")
    assert broken.spills  # the budget is still taken by the third
    store.release(third, reuse=False)
    store.discard(broken)
    unfinished = store.decoder(specs_from_header(header, 1 << 30), False, "e")
    assert not unfinished.spills
    store.discard(unfinished)  # a broken stream gives its share of the budget back
    assert not store.decoder(specs_from_header(header, 1 << 30), False, "f").spills
