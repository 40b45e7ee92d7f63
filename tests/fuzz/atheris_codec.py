"""Coverage-guided fuzzing of the tensor codec with atheris (libFuzzer), as its own process.

    python tests/fuzz/atheris_codec.py -runs=N

Each input is split into a header (parsed as TensorStreamHeader), chunks and a checksum. The
codec may refuse with CodecError (or protobuf with DecodeError); anything else is a crash that
atheris reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported before instrumentation: only fedsilo code is instrumented)
import torch
import xxhash  # noqa: F401
from google.protobuf.message import DecodeError

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb

with atheris.instrument_imports(include=["fedsilo"]):
    from fedsilo.common.specs import check_specs_match, specs_from_header, specs_of
    from fedsilo.common.tensor_stream import TensorStreamDecoder

MODEL = specs_of({"w": torch.zeros(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16)})
MODEL_BYTES = sum(spec.nbytes for spec in MODEL)


def test_one_input(data: bytes) -> None:
    """Run one fuzz input through header parsing, matching and chunk decoding."""
    provider = atheris.FuzzedDataProvider(data)
    raw_header = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 512))
    try:
        header = pb.TensorStreamHeader.FromString(raw_header)
    except DecodeError:
        header = pb.TensorStreamHeader()  # go on with the model's own header below
    try:
        specs = specs_from_header(header, MODEL_BYTES, max_tensors=len(MODEL))
        check_specs_match(specs, MODEL)
    except CodecError:
        specs = MODEL
    decoder = TensorStreamDecoder(specs, max_chunk_size=32)
    try:
        while provider.remaining_bytes() > 8:
            decoder.feed(provider.ConsumeBytes(provider.ConsumeIntInRange(0, 40)))
        decoder.finish(provider.ConsumeIntInRange(0, 2**64 - 1))
    except CodecError:
        return


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
