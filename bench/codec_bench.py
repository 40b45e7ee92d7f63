"""Benchmark 1 of issue 6: encode and decode a 256 MiB state dict through the tensor codec.

    python bench/codec_bench.py [--repeats 5] [--json out.json]

The state dict has 20 tensors, half float32 and half bfloat16. Encode = cut into 1 MiB chunk
frames exactly as the server does (memoryviews + protobuf wire framing + xxh3); decode = parse
each frame as the receiver does and copy it into preallocated tensors, then check the checksum.
Each figure is printed with median, min and max over the repeats, and as a ratio to the ceiling
measured in the same run: torch's copy bandwidth into a preallocated tensor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of, specs_from_header, specs_of
from fedsilo.common.tensor_stream import TensorStreamDecoder, TensorStreamEncoder
from fedsilo.common.wire import SERVER_CHUNKS

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


def timed(action: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``action`` (after one warm-up)."""
    action()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return runs


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
    figures = {
        "copy_ceiling": timed(lambda: sink.copy_(source), args.repeats),
        "encode": timed(encode, args.repeats),
        "decode": timed(decode, args.repeats),
    }
    assert all(torch.equal(target[n].view(torch.uint8), state[n].view(torch.uint8)) for n in state)
    ceiling = TOTAL / statistics.median(figures["copy_ceiling"]) / 1e9
    report = {}
    for name, runs in figures.items():
        rates = sorted(TOTAL / r / 1e9 for r in runs)
        report[name] = {
            "median_gbps": round(statistics.median(rates), 3),
            "min_gbps": round(rates[0], 3),
            "max_gbps": round(rates[-1], 3),
            "ratio_to_copy": round(statistics.median(rates) / ceiling, 3),
        }
        print(
            f"{name:>13}: median {report[name]['median_gbps']:6.2f} GB/s "
            f"(min {rates[0]:.2f}, max {rates[-1]:.2f}) = {report[name]['ratio_to_copy']:.2f} "
            f"x torch copy"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
