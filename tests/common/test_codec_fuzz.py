"""Fuzzing the tensor codec with arbitrary bytes: it refuses with CodecError, nothing else."""

from __future__ import annotations

import torch
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import check_specs_match, specs_from_header, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder

MODEL = specs_of({"w": torch.zeros(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16)})
MODEL_BYTES = sum(spec.nbytes for spec in MODEL)
EXAMPLES = 400


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_header_bytes_parse_or_are_refused_cleanly(raw: bytes) -> None:
    try:
        header = pb.TensorStreamHeader.FromString(raw)
    except DecodeError:
        return
    try:
        specs = specs_from_header(header, MODEL_BYTES, max_tensors=len(MODEL))
        check_specs_match(specs, MODEL)
    except CodecError:
        return
    assert specs == MODEL  # whatever got through is exactly the model's layout


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(0, 2**64 - 1))
def test_arbitrary_chunks_and_checksums_never_escape_codec_errors(
    chunks: list[bytes], checksum: int
) -> None:
    decoder = TensorStreamDecoder(MODEL, max_chunk_size=32)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.finish(checksum)
    except CodecError:
        return
    assert decoder.received_bytes == MODEL_BYTES
