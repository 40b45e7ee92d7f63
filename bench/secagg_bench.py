"""Secure aggregation's cost: masking, the masked sum, unmasking, next to a plain float32 add.

    python bench/secagg_bench.py [--mib 256] [--repeats 5] [--json out.json]

Measured in one process, in the same run (median [min, max] of the repeats, after a warm-up):

- mask expansion alone (one AES-CTR mask stream added into a uint32 vector);
- a client's masked upload: quantization + its self-mask + 3 pairwise masks (4 clients, full
  graph), GB/s of float32 update in;
- the server's masked sum (uint32 chunks added mod 2^32 as they arrive) and the plain float32
  fold of the same bytes (numpy and torch in-place adds, chunk by chunk);
- the server's unmasking (4 self-masks removed; one dropout's 3 pairwise masks too);
- the key stages (advertise, share keys, unmask; signed with fl-certs P-256 keys) of 4 and
  of 50 clients, CPU seconds for everyone together (one process plays all of them).

Then the projected round-time overhead for 256 MiB x 4 clients and a tiny model x 50 clients,
from those figures: what secure aggregation adds to the critical path of a round, next to the
plain round of BENCHMARKS.md (given with --plain-big-s / --plain-tiny-s, since the plain round
goes through the daemons and is not measured here). Figures only: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import summary
from fedsilo.common.secagg import (
    Identity,
    RoundSetup,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Trust,
)
from fedsilo.common.secagg.masks import DEFAULT_CHUNK_WORDS, WORD, MaskStream, Scratch
from fedsilo.common.secagg.result import RunningSum
from fedsilo.common.secagg.server import unmask_threads
from fedsilo.provision import certs

MIB = 1 << 20
CHUNK = DEFAULT_CHUNK_WORDS
TINY_LENGTH = 2621  # the 0.01 MiB model of BENCHMARKS.md section 4
CONFIG = SecAggConfig(clip_norm=10.0, max_weight=100_000)


def timed(action: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``action`` (after one warm-up)."""
    action()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return runs


def rate(nbytes: int, runs: list[float]) -> dict[str, float]:
    """GB/s of ``nbytes`` per run: median, min (of the slowest run), max."""
    return {
        "median": nbytes / statistics.median(runs) / 1e9,
        "min": nbytes / max(runs) / 1e9,
        "max": nbytes / min(runs) / 1e9,
    }


def show(label: str, figures: dict[str, float], unit: str) -> None:
    """Print one figure line."""
    print(
        f"{label:58s} {figures['median']:8.4f} {unit} [{figures['min']:.3f}, {figures['max']:.3f}]"
    )


def identities(n: int) -> tuple[dict[int, Identity], Trust]:
    """Client identities of a fresh federation CA (fl-certs' own functions)."""
    ca_key, ca_cert = certs.make_ca(days=1)
    out = {}
    for client in range(n):
        key, cert = certs.make_client_cert(ca_key, ca_cert, f"org-{client}", 1)
        out[client] = Identity(f"org-{client}", key, certs.certificate_pem(cert))
    return out, Trust((ca_cert,))


def setup_for(n: int, length: int, attempt: int) -> RoundSetup:
    """A round of ``n`` participants."""
    return RoundSetup(1, 1, attempt.to_bytes(16, "big"), tuple(range(n)), length)


class Clock:
    """Seconds spent by each party: the server and every client."""

    def __init__(self) -> None:
        self.server = 0.0
        self.clients: dict[int, float] = {}

    def run(self, party: int | None, action: Callable[[], Any]) -> Any:
        """Run ``action`` on behalf of ``party`` (None: the server) and book its time."""
        started = time.perf_counter()
        out = action()
        spent = time.perf_counter() - started
        if party is None:
            self.server += spent
        else:
            self.clients[party] = self.clients.get(party, 0.0) + spent
        return out

    def critical_path(self) -> float:
        """Server time plus the slowest client's (clients work in parallel, on their own CPUs)."""
        return self.server + max(self.clients.values(), default=0.0)


def key_stages(
    n: int, length: int, ids: dict[int, Identity], trust: Trust, *, attempt: int, clock: Clock
) -> tuple[SecAggServer, dict[int, SecAggClient], int]:
    """Run advertise and share keys for ``n`` signed clients; return them and the bytes moved."""
    setup = setup_for(n, length, attempt)
    server = clock.run(None, lambda: SecAggServer(setup, CONFIG, trust=trust))
    clients = {
        c: clock.run(c, lambda c=c: SecAggClient(setup, c, CONFIG, identity=ids[c], trust=trust))
        for c in range(n)
    }
    moved = 0
    for c, client in clients.items():
        advert = clock.run(c, client.advertise)
        moved += _size(advert)
        clock.run(None, lambda advert=advert: server.receive_advert(advert))
    for c, roster in clock.run(None, server.close_adverts).items():
        moved += sum(_size(a) for a in roster.adverts) + 8 * len(roster.clients)
        shares = clock.run(c, lambda c=c, roster=roster: clients[c].share_keys(roster))
        moved += sum(_size(s) for s in shares.shares)
        clock.run(None, lambda shares=shares: server.receive_shares(shares))
    for c, routed in clock.run(None, server.close_shares).items():
        moved += sum(_size(s) for s in routed.shares)
        clock.run(c, lambda c=c, routed=routed: clients[c].receive_shares(routed))
    return server, clients, moved


def _size(message: Any) -> int:
    """Bytes of a message on a plain encoding: bytes fields as they are, 8 per number."""
    total = 0
    for value in vars(message).values():
        if isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, str):
            total += len(value.encode())
        elif isinstance(value, int):
            total += 8
    return total


def unmask_stage(server: SecAggServer, clients: dict[int, SecAggClient], clock: Clock) -> int:
    """Answer the unmask requests (mask removal not included); return the bytes moved."""
    moved = 0
    for c, request in clock.run(None, server.close_uploads).items():
        moved += 8 * (len(request.self_mask_of) + len(request.mask_key_of))
        response = clock.run(c, lambda c=c, request=request: clients[c].unmask(request))
        moved += 74 * (len(response.self_mask_shares) + len(response.mask_key_shares))
        clock.run(None, lambda response=response: server.receive_unmask(response))
    return moved


def tiny_round(n: int, ids: dict[int, Identity], trust: Trust, attempt: int) -> dict[str, float]:
    """A whole signed round of ``n`` clients of the tiny model: critical path and bytes."""
    clock = Clock()
    server, clients, moved = key_stages(n, TINY_LENGTH, ids, trust, attempt=attempt, clock=clock)
    delta = np.full(TINY_LENGTH, 1e-3, dtype=np.float32)
    for c, client in clients.items():
        upload = clock.run(None, lambda c=c: server.begin_upload(c))
        chunks = clock.run(
            c, lambda client=client: list(client.masked_input([delta], norm=0.05, weight=10))
        )
        for chunk in chunks:
            clock.run(None, lambda upload=upload, chunk=chunk: upload.add(chunk))
        clock.run(None, upload.finish)
    moved += unmask_stage(server, clients, clock)
    clock.run(None, server.finish)
    return {
        "critical_s": clock.critical_path(),
        "server_s": clock.server,
        "slowest_client_s": max(clock.clients.values()),
        "all_cpu_s": clock.server + sum(clock.clients.values()),
        "key_bytes": moved,
    }


def measure_vectors(
    length: int, repeats: int, ids: dict[int, Identity], trust: Trust
) -> dict[str, Any]:
    """Throughput of masking, the masked sum, the plain add and unmasking; print each."""
    nbytes = length * 4
    results: dict[str, Any] = {}
    words = np.zeros(length, dtype=WORD)
    scratch = Scratch(CHUNK)
    runs = timed(lambda: MaskStream(bytes(32)).add_to(words, 1, scratch), repeats)
    results["mask_expansion_gbs"] = rate(nbytes, runs)
    show("mask expansion + add (one stream)", results["mask_expansion_gbs"], "GB/s")

    update = (np.random.default_rng(0).standard_normal(length) * 1e-4).astype(np.float32)
    pieces = [update[i : i + CHUNK] for i in range(0, length, CHUNK)]
    runs = []
    for attempt in range(repeats + 1):  # a fresh attempt each time: keys are single-use
        _, clients, _ = key_stages(4, length, ids, trust, attempt=attempt + 1, clock=Clock())
        started = time.perf_counter()
        for _chunk in clients[0].masked_input(pieces, norm=0.5, weight=10):
            pass  # quantize + self-mask + 3 pairwise masks (4 clients)
        if attempt:  # the first is the warm-up
            runs.append(time.perf_counter() - started)
    results["client_mask_gbs"] = rate(nbytes, runs)
    results["client_mask_s"] = summary(runs)
    show("client: quantize + 4 masks (4 clients), float32 in", results["client_mask_gbs"], "GB/s")

    chunk_bytes = [p.view(WORD).tobytes() for p in pieces[:8]]  # stand-ins for masked chunks
    total = RunningSum(length + 1)
    total.allocate()

    def masked_sum() -> None:
        for index in range(len(pieces)):
            total.add(index * CHUNK, chunk_bytes[index % 8][: len(pieces[index]) * 4])

    runs = timed(masked_sum, repeats)
    results["server_sum_gbs"], results["server_sum_s"] = rate(nbytes, runs), summary(runs)
    show("server: masked sum, uint32 chunks mod 2^32", results["server_sum_gbs"], "GB/s")

    plain = np.zeros(length, dtype=np.float32)

    def plain_sum() -> None:
        for index, piece in enumerate(pieces):
            target = plain[index * CHUNK : index * CHUNK + len(piece)]
            np.add(target, piece, out=target)

    runs = timed(plain_sum, repeats)
    results["plain_numpy_gbs"], results["plain_numpy_s"] = rate(nbytes, runs), summary(runs)
    show("plain: float32 add, numpy, same chunks", results["plain_numpy_gbs"], "GB/s")
    plain_t, update_t = torch.zeros(length), torch.from_numpy(update)
    runs = timed(lambda: plain_t.add_(update_t), repeats)
    results["plain_torch_gbs"] = rate(nbytes, runs)
    show("plain: float32 add_, torch, whole tensor", results["plain_torch_gbs"], "GB/s")

    def unmask_cost(streams: int) -> None:
        masks = [(index.to_bytes(32, "big"), -1) for index in range(streams)]
        total.apply_masks(masks, threads=unmask_threads())  # as the server's finish does

    results["unmask_4_s"] = summary(timed(lambda: unmask_cost(4), repeats))
    show("server: remove 4 self-masks (no dropout)", results["unmask_4_s"], "s")
    results["unmask_dropout_s"] = summary(timed(lambda: unmask_cost(3 + 3), repeats))
    show("server: 3 self-masks + a dropout's 3 pair masks", results["unmask_dropout_s"], "s")
    return results


def measure_rounds(repeats: int, ids: dict[int, Identity], trust: Trust) -> dict[str, Any]:
    """Whole signed rounds of the tiny model with 4 and 50 clients; print each party's time."""
    print("\nwhole signed rounds (P-256 keys); one process plays every party, each party's time")
    print("is booked apart; critical path = server + slowest client (clients run in parallel):")
    results: dict[str, Any] = {}
    attempt = 100
    for n in (4, 50):
        rounds = []
        for _ in range(repeats):
            attempt += 1
            rounds.append(tiny_round(n, ids, trust, attempt))
        entry: dict[str, Any] = {k: summary([r[k] for r in rounds]) for k in rounds[0]}
        entry["key_bytes"] = rounds[0]["key_bytes"]
        results[f"tiny_{n}"] = entry
        show(f"tiny x {n}: critical path", entry["critical_s"], "s")
        show(f"tiny x {n}: server", entry["server_s"], "s")
        show(f"tiny x {n}: slowest client", entry["slowest_client_s"], "s")
        print(f"{'':58s} key-stage bytes, all clients: {entry['key_bytes']:,}")
    return results


def project(results: dict[str, Any], length: int, plain_big: float, plain_tiny: float) -> None:
    """Print and record the projected overhead of the two rounds of the issue."""
    nbytes = 4 * length
    client_s = results["client_mask_s"]["median"]
    extra_sum = 4 * max(0.0, results["server_sum_s"]["median"] - results["plain_numpy_s"]["median"])
    unmask_s = results["unmask_4_s"]["median"]
    keys_big = results["tiny_4"]["critical_s"]["median"]  # the key stages do not grow with size
    big = client_s + extra_sum + unmask_s + keys_big
    big_bytes = 4 * (length + 1) + results["tiny_4"]["key_bytes"] / 4
    print(f"\nprojection, {length * 4 // MIB} MiB x 4 and tiny x 50 (critical path):")
    print(
        f"big x 4:   + {big:.3f} s per round (client masking {client_s:.3f}, masked sum over the"
        f" plain fold {extra_sum:.3f}, unmasking {unmask_s:.3f}, key stages {keys_big:.3f})"
    )
    print(
        f"           = {(plain_big + big) / plain_big:.2f} x a {plain_big} s plain round (serial"
        " worst case: masking streams along with the upload's transfer)"
    )
    print(f"           bytes up per client: {big_bytes / nbytes:.5f} x the plain float32 update")
    tiny = results["tiny_50"]["critical_s"]["median"]
    tiny_bytes = (results["tiny_50"]["key_bytes"] / 50 + 4 * (TINY_LENGTH + 1)) / (4 * TINY_LENGTH)
    print(
        f"tiny x 50: + {tiny:.3f} s per round = {(plain_tiny + tiny) / plain_tiny:.1f} x a"
        f" {plain_tiny} s plain round, before 3 more message round trips"
    )
    print(
        f"           bytes per client: {tiny_bytes:.1f} x the plain update (certificates, shares)"
    )
    results["projection"] = {
        "big_added_s": big,
        "big_x": (plain_big + big) / plain_big,
        "big_bytes_x": big_bytes / nbytes,
        "tiny_added_s": tiny,
        "tiny_x": (plain_tiny + tiny) / plain_tiny,
        "tiny_bytes_x": tiny_bytes,
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--plain-big-s", type=float, default=0.84, help="plain big round (BENCHMARKS.md 3)"
    )
    parser.add_argument(
        "--plain-tiny-s",
        type=float,
        default=0.1,
        help="plain round of 50 tiny clients (between BENCHMARKS.md 4's 10- and 100-client rounds)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    length = args.mib * MIB // 4
    print(f"secure aggregation, {args.mib} MiB vector ({length:,} float32), chunks of 1 MiB")
    ids, trust = identities(50)
    results: dict[str, Any] = {"mib": args.mib, "repeats": args.repeats}
    results.update(measure_vectors(length, args.repeats, ids, trust))
    results.update(measure_rounds(args.repeats, ids, trust))
    project(results, length, args.plain_big_s, args.plain_tiny_s)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
