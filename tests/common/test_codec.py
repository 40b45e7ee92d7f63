"""The tensor codec: bit-exact round trips over every wire dtype, chunking, and every refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import (
    DTYPES,
    TensorSpec,
    byte_view,
    check_specs_match,
    header_of,
    specs_from_header,
    specs_of,
)
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from tests.wire_helpers import decode_state, encode_state

MAX_TOTAL = 1 << 30


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The logical row-major bytes of a tensor, whatever its layout or conj/neg bits."""
    flat = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """View raw bytes as a tensor of ``dtype`` (so NaN, inf and subnormal patterns all occur)."""
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    as_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dtype is torch.bool:
        as_bytes = as_bytes & 1  # a bool byte other than 0/1 is not a valid bool
    return as_bytes.view(dtype).reshape(shape)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    size = math.prod(shape) * dtype.itemsize
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    return tensor_from_bytes(data, dtype, shape)


def assert_bit_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert tuple(got[name].shape) == tuple(tensor.shape), name
        assert raw_bytes(got[name]) == raw_bytes(tensor), name


def round_trip(state: dict[str, torch.Tensor], chunk_size: int) -> dict[str, torch.Tensor]:
    header, chunks, checksum = encode_state(state, chunk_size)
    return decode_state(
        header,
        chunks,
        checksum,
        expected=specs_of(state),
        max_chunk_size=chunk_size,
        max_total_bytes=MAX_TOTAL,
    )


# ------------------------------------------------------------------ round trips


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 5))
    names = draw(st.lists(st.text(max_size=10), min_size=count, max_size=count, unique=True))
    state = {}
    for name in names:
        dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        size = math.prod(shape) * dtype.itemsize
        data = draw(st.binary(min_size=size, max_size=size))
        state[name] = tensor_from_bytes(data, dtype, shape)
    return state


@settings(max_examples=150, deadline=None)
@given(state=state_dicts(), chunk_size=st.integers(1, 4096))
def test_random_state_dict_round_trips_bit_for_bit(state, chunk_size):
    header, chunks, checksum = encode_state(state, chunk_size)
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert header.total_bytes == total
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert len(chunks) == math.ceil(total / chunk_size)
    assert b"".join(chunks) == b"".join(raw_bytes(t) for t in state.values())
    decoded = decode_state(header, chunks, checksum, specs_of(state), chunk_size, MAX_TOTAL)
    assert_bit_identical(decoded, state)


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_every_dtype_round_trips_bit_for_bit(dtype_name, chunk_size):
    dtype = DTYPES[dtype_name]
    state = {
        "scalar": random_tensor(dtype, (), seed=1),
        "empty": torch.empty((3, 0, 2), dtype=dtype),
        "matrix": random_tensor(dtype, (7, 5), seed=2),
        "vector": random_tensor(dtype, (11,), seed=3),
    }
    assert_bit_identical(round_trip(state, chunk_size), state)


def test_nan_inf_and_negative_zero_floats_survive_unchanged():
    values = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.0]
    state = {
        "f64": torch.tensor(values, dtype=torch.float64),
        "f32": torch.tensor(values, dtype=torch.float32),
        "f16": torch.tensor(values, dtype=torch.float16),
        "bf16": torch.tensor(values, dtype=torch.bfloat16),
        "c64": torch.tensor([complex(float("nan"), -0.0)], dtype=torch.complex64),
    }
    assert_bit_identical(round_trip(state, 5), state)


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_non_contiguous_inputs_round_trip_as_their_logical_values(dtype_name):
    dtype = DTYPES[dtype_name]
    base = random_tensor(dtype, (6, 8), seed=4)
    state = {
        "transposed": base.t(),
        "stepped": base[::2, 1::3],
        "column": base[:, 3],
        "expanded": base[0:1, :].expand(4, 8),
        "offset": base[2:4],
    }
    assert not state["transposed"].is_contiguous()
    assert not state["stepped"].is_contiguous()
    decoded = round_trip(state, 7)
    for name, tensor in state.items():
        assert decoded[name].is_contiguous()
        assert raw_bytes(decoded[name]) == raw_bytes(tensor), name
        assert torch.equal(decoded[name].view(torch.uint8), tensor.contiguous().view(torch.uint8))


def test_conjugated_and_negated_views_round_trip_as_their_values():
    base = torch.complex(torch.randn(4, 3), torch.randn(4, 3))
    state = {"conj": base.conj(), "neg": torch._neg_view(torch.randn(5)), "grad": base.abs()}
    state["grad"].requires_grad_(True)
    decoded = round_trip(state, 16)
    assert torch.equal(decoded["conj"], base.conj().resolve_conj())
    assert torch.equal(decoded["neg"], state["neg"].resolve_neg())
    assert torch.equal(decoded["grad"], base.abs())


def test_large_tensor_is_split_into_chunks_no_larger_than_chunk_size():
    tensor = torch.arange(1000, dtype=torch.float32)  # 4000 bytes
    header, chunks, _ = encode_state({"w": tensor}, chunk_size=512)
    assert [len(c) for c in chunks] == [512] * 7 + [4000 - 7 * 512]
    assert header.total_bytes == 4000


def test_chunks_span_tensor_boundaries():
    first = torch.arange(6, dtype=torch.uint8)
    second = torch.arange(100, 110, dtype=torch.uint8)
    encoder = TensorStreamEncoder([first, second], chunk_size=4)
    chunks = list(encoder)
    # 6 + 10 bytes in chunks of 4: the second chunk holds the end of one tensor and the start of
    # the next, as two parts.
    assert [[bytes(p) for p in parts] for parts in chunks] == [
        [bytes([0, 1, 2, 3])],
        [bytes([4, 5]), bytes([100, 101])],
        [bytes(range(102, 106))],
        [bytes(range(106, 110))],
    ]


def test_encoder_parts_point_into_contiguous_tensor_memory():
    tensor = torch.arange(64, dtype=torch.float32)
    parts = [part for chunk in TensorStreamEncoder([tensor], chunk_size=100) for part in chunk]
    addresses = [np.frombuffer(part, dtype=np.uint8).ctypes.data for part in parts]
    assert addresses == [tensor.data_ptr() + 100 * i for i in range(len(parts))]


def test_state_of_only_empty_tensors_encodes_to_no_chunks_and_decodes():
    state = {"a": torch.empty(0), "b": torch.empty((2, 0), dtype=torch.int64)}
    header, chunks, checksum = encode_state(state, 8)
    assert chunks == []
    assert_bit_identical(decode_state(header, chunks, checksum), state)


def test_encoder_checksum_is_xxh3_64_of_all_streamed_bytes():
    state = {"a": torch.randn(33), "b": torch.arange(7)}
    _, chunks, checksum = encode_state(state, 10)
    assert checksum == xxhash.xxh3_64_intdigest(b"".join(chunks))


def test_encoder_checksum_read_before_iteration_finished_raises():
    encoder = TensorStreamEncoder([torch.zeros(100)], chunk_size=64)
    with pytest.raises(RuntimeError):
        _ = encoder.checksum
    iterator = iter(encoder)
    next(iterator)
    with pytest.raises(RuntimeError):
        _ = encoder.checksum
    list(iterator)
    assert isinstance(encoder.checksum, int)


def test_encoder_refuses_non_positive_chunk_size():
    with pytest.raises(ValueError):
        TensorStreamEncoder([torch.zeros(1)], chunk_size=0)


def test_unsupported_dtype_is_refused_when_describing_a_state():
    unsupported = [
        getattr(torch, n) for n in ("float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)
    ]
    unsupported = [d for d in unsupported if d not in DTYPES.values()]
    if not unsupported:
        pytest.skip("this torch has no dtype outside the codec's list")
    with pytest.raises(CodecError, match="not supported"):
        specs_of({"x": torch.zeros(2, dtype=unsupported[0])})


# ------------------------------------------------------------------ decoding in place


def test_decoder_into_fills_the_given_tensors_in_place():
    source = {"w": torch.randn(5, 4), "b": torch.randn(4), "n": torch.tensor(7)}
    header, chunks, checksum = encode_state(source, 9)
    into = {name: torch.zeros_like(t) for name, t in source.items()}
    pointers = {name: t.data_ptr() for name, t in into.items()}
    decoder = TensorStreamDecoder(specs_from_header(header, MAX_TOTAL), into=into, max_chunk_size=9)
    for chunk in chunks:
        decoder.feed(chunk)
    result = decoder.finish(checksum)
    for name, tensor in source.items():
        assert result[name] is into[name]
        assert into[name].data_ptr() == pointers[name]
        assert torch.equal(into[name], tensor)


def test_decoder_into_refuses_tensor_of_wrong_dtype_or_layout():
    specs = [TensorSpec("w", torch.float32, (3, 4))]
    with pytest.raises(ValueError):
        TensorStreamDecoder(specs, into={"w": torch.zeros(3, 4, dtype=torch.float64)})
    with pytest.raises(ValueError):
        TensorStreamDecoder(specs, into={"w": torch.zeros(4, 3)})
    with pytest.raises(ValueError):
        TensorStreamDecoder(specs, into={"w": torch.zeros(4, 3).t()})


# ------------------------------------------------------------------ stream refusals


def encoded(chunk_size: int = 8):
    state = {"a": torch.arange(10, dtype=torch.float32), "b": torch.arange(3, dtype=torch.int64)}
    header, chunks, checksum = encode_state(state, chunk_size)
    decoder = TensorStreamDecoder(specs_from_header(header, MAX_TOTAL), max_chunk_size=chunk_size)
    return decoder, chunks, checksum


def test_corrupted_chunk_byte_is_refused_with_checksum_mismatch_at_finish():
    decoder, chunks, checksum = encoded()
    damaged = bytearray(chunks[2])
    damaged[3] ^= 0x01
    chunks[2] = bytes(damaged)
    for chunk in chunks:
        decoder.feed(chunk)
    assert decoder.complete
    with pytest.raises(CodecError, match="checksum"):
        decoder.finish(checksum)


def test_wrong_trailer_checksum_is_refused():
    decoder, chunks, checksum = encoded()
    for chunk in chunks:
        decoder.feed(chunk)
    with pytest.raises(CodecError, match="checksum"):
        decoder.finish(checksum ^ 1)


def test_stream_missing_its_last_chunk_is_refused_at_finish():
    decoder, chunks, checksum = encoded()
    for chunk in chunks[:-1]:
        decoder.feed(chunk)
    assert not decoder.complete
    with pytest.raises(CodecError, match="ended after"):
        decoder.finish(checksum)


def test_chunk_past_declared_length_is_refused():
    decoder, chunks, _ = encoded()
    for chunk in chunks:
        decoder.feed(chunk)
    with pytest.raises(CodecError, match="more than"):
        decoder.feed(b"\x00")


def test_overflowing_chunk_is_refused_before_any_byte_is_written():
    into = {"w": torch.zeros(2, dtype=torch.int32)}
    decoder = TensorStreamDecoder(specs_of(into), into=into, max_chunk_size=64)
    with pytest.raises(CodecError):
        decoder.feed(b"\x01" * 12)
    assert torch.equal(into["w"], torch.zeros(2, dtype=torch.int32))
    assert decoder.received_bytes == 0


def test_chunk_larger_than_max_chunk_size_is_refused():
    decoder, _, _ = encoded(chunk_size=8)
    with pytest.raises(CodecError, match="exceeds"):
        decoder.feed(b"\x00" * 9)
    decoder.feed(b"\x00" * 8)  # exactly the limit is fine


def test_empty_chunk_is_refused():
    decoder, _, _ = encoded()
    with pytest.raises(CodecError, match="empty"):
        decoder.feed(b"")


# ------------------------------------------------------------------ header refusals


def make_header(*tensors: tuple[str, str, list[int], int], total: int | None = None):
    header = pb.TensorStreamHeader()
    for name, dtype, shape, nbytes in tensors:
        header.tensors.add(name=name, dtype=dtype, shape=shape, nbytes=nbytes)
    header.total_bytes = sum(t[3] for t in tensors) if total is None else total
    return header


def test_header_built_from_specs_parses_back_to_the_same_specs():
    state = {"w": torch.zeros(3, 4, dtype=torch.bfloat16), "s": torch.tensor(1, dtype=torch.uint8)}
    specs = specs_of(state)
    assert specs_from_header(header_of(specs), MAX_TOTAL) == specs
    assert [s.nbytes for s in specs] == [24, 1]


@pytest.mark.parametrize("dtype", ["float128", "object", "torch.float32", "Float32", ""])
def test_header_with_unknown_dtype_is_refused(dtype):
    with pytest.raises(CodecError, match="unknown dtype"):
        specs_from_header(make_header(("w", dtype, [2], 8)), MAX_TOTAL)


@pytest.mark.parametrize("nbytes", [0, 23, 25, 48])
def test_header_with_nbytes_inconsistent_with_shape_is_refused(nbytes):
    with pytest.raises(CodecError, match="needs 24"):
        specs_from_header(make_header(("w", "float32", [2, 3], nbytes)), MAX_TOTAL)


@pytest.mark.parametrize("total", [0, 31, 33])
def test_header_with_total_bytes_mismatch_is_refused(total):
    header = make_header(("a", "float32", [4], 16), ("b", "int64", [2], 16), total=total)
    with pytest.raises(CodecError, match="total_bytes"):
        specs_from_header(header, MAX_TOTAL)


@pytest.mark.parametrize("shape", [[0, 2**64 - 1], [0, 1 << 62], [1] * 65])
def test_header_with_an_unallocatable_shape_is_refused_even_when_empty(shape):
    with pytest.raises(CodecError, match="out of range"):
        specs_from_header(make_header(("w", "float32", shape, 0)), MAX_TOTAL)


def test_header_with_duplicate_names_is_refused():
    header = make_header(("w", "float32", [1], 4), ("w", "float32", [1], 4))
    with pytest.raises(CodecError, match="twice"):
        specs_from_header(header, MAX_TOTAL)


def test_header_exceeding_max_total_bytes_is_refused():
    header = make_header(("a", "float32", [4], 16), ("b", "float32", [4], 16))
    assert len(specs_from_header(header, 32)) == 2
    with pytest.raises(CodecError, match="limit"):
        specs_from_header(header, 31)


def test_decode_state_refuses_header_over_max_total_bytes():
    header, chunks, checksum = encode_state({"w": torch.zeros(16)}, 1024)
    with pytest.raises(CodecError):
        decode_state(header, chunks, checksum, max_total_bytes=63)


# ------------------------------------------------------------------ spec matching

MODEL = [TensorSpec("w", torch.float32, (3, 4)), TensorSpec("b", torch.float32, (4,))]


def test_matching_specs_are_accepted():
    check_specs_match(list(MODEL), MODEL)


@pytest.mark.parametrize(
    "received",
    [
        pytest.param([TensorSpec("w", torch.float64, (3, 4)), MODEL[1]], id="wrong-dtype"),
        pytest.param([TensorSpec("w", torch.float32, (4, 3)), MODEL[1]], id="wrong-shape"),
        pytest.param([TensorSpec("w", torch.float32, (12,)), MODEL[1]], id="flattened-shape"),
        pytest.param([TensorSpec("v", torch.float32, (3, 4)), MODEL[1]], id="wrong-name"),
        pytest.param([MODEL[1], MODEL[0]], id="wrong-order"),
        pytest.param([MODEL[0]], id="too-few"),
        pytest.param([*MODEL, TensorSpec("c", torch.float32, ())], id="too-many"),
        pytest.param([], id="none"),
    ],
)
def test_specs_not_matching_the_model_are_refused(received):
    with pytest.raises(CodecError):
        check_specs_match(received, MODEL)


def test_decode_state_with_expected_refuses_another_model():
    header, chunks, checksum = encode_state({"w": torch.zeros(3, 4), "b": torch.zeros(5)}, 64)
    with pytest.raises(CodecError):
        decode_state(header, chunks, checksum, expected=MODEL)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_a_byte_view_shares_the_tensors_memory_in_every_dtype(
    dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    tensor = torch.zeros(shape, dtype=dtype)
    view = byte_view(tensor)
    assert view.dtype == np.uint8 and len(view) == tensor.numel() * tensor.element_size()
    view[:] = 1  # written through the view, read back through the tensor
    assert raw_bytes(tensor) == bytes([1]) * len(view)
