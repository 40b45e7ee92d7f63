"""Benchmark 1 of issue 6: encode and decode a 256 MiB state dict through the tensor codec.

    python bench/codec_bench.py [--repeats 5] [--json out.json]

The state dict has 20 tensors, half float32 and half bfloat16. Encode = cut into 1 MiB chunk
frames exactly as the server does (memoryviews + protobuf wire framing + xxh3); decode = parse
each frame as the receiver does and copy it into preallocated tensors, then check the checksum.
The ceiling is torch's copy bandwidth into a preallocated tensor. Copy, encode and decode run
interleaved (copy, encode, decode, copy, ...) after one warm-up each; every figure is printed
with median, min and max over the repetitions, and each ratio to the copy is taken within
each repetition (bench/harness.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of, specs_from_header, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from fedsilo.common.wire import SERVER_CHUNKS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    Conditions,
    cell,
    interleave,
    markdown_table,
    ratios,
    summary,
    write_report,
)

MIB = 1 << 20
TOTAL = 256 * MIB


def make_state() -> dict[str, torch.Tensor]:
    """20 tensors, 256 MiB in all: 10 float32 and 10 bfloat16 of equal byte size."""
    per_tensor = TOTAL // 20
    state = {}
    for index in range(20):
        dtype = torch.float32 if index % 2 == 0 else torch.bfloat16
        state[f"layer{index}.weight"] = torch.randn(per_tensor // dtype.itemsize).to(dtype)
    return state


def rate(action: Callable[[], object]) -> dict[str, float]:
    """GB/s of one run of ``action`` over the 256 MiB state."""
    started = time.perf_counter()
    action()
    return {"gbps": TOTAL / (time.perf_counter() - started) / 1e9}


def main() -> None:
    """Run the benchmark and print GB/s figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    state = make_state()
    specs = specs_of(state)
    header = header_of(specs)
    frames: list[bytes] = []

    def encode() -> None:
        encoder = TensorStreamEncoder(list(state.values()))
        frames[:] = [SERVER_CHUNKS.frame(parts) for parts in encoder]
        frames.append(
            pb.ServerMessage(
                trailer=pb.TensorStreamTrailer(checksum=encoder.checksum)
            ).SerializeToString()
        )

    target = {name: torch.empty_like(t) for name, t in state.items()}

    def decode() -> None:
        decoder = TensorStreamDecoder(specs_from_header(header, TOTAL), into=target)
        for frame in frames[:-1]:
            decoder.feed(pb.ServerMessage.FromString(frame).chunk.data)
        decoder.finish(pb.ServerMessage.FromString(frames[-1]).trailer.checksum)

    source = torch.randn(TOTAL // 4)
    sink = torch.empty_like(source)
    steps = [("copy", lambda: sink.copy_(source)), ("encode", encode), ("decode", decode)]
    for _, action in steps:  # warm-up: first-touch page faults and lazy initialisation
        action()
    conditions = Conditions()
    repetitions = interleave(
        [(name, lambda a=action: rate(a)) for name, action in steps], args.repeats
    )
    conditions.end()
    assert all(torch.equal(target[n].view(torch.uint8), state[n].view(torch.uint8)) for n in state)
    report = {
        "figures": {name: summary([rep[name]["gbps"] for rep in repetitions]) for name, _ in steps},
        "ratios": {
            name: ratios(repetitions, f"{name}.gbps", "copy.gbps") for name in ("encode", "decode")
        },
        "repetitions": repetitions,
        "conditions": conditions.as_dict(),
    }
    rows = [
        [
            name,
            cell(report["figures"][name]),
            cell(report["ratios"][name]) if name != "copy" else "1",
        ]
        for name, _ in steps
    ]
    print(markdown_table(["step", "GB/s median [min, max]", "/ torch copy, per repetition"], rows))
    print(conditions.line())
    write_report(args.json, report)


if __name__ == "__main__":
    main()
