"""fedsilo over emulated WAN links, against raw TCP, a plain grpcio stream and Flower 1.42.

    sudo .venv/bin/python bench/wan_bench.py [--profiles 1g-50ms,200m-80ms-loss]
        [--repeats 3] [--rounds 3] [--mib 1g-50ms=256,200m-80ms-loss=64] [--check-only]
        [--json out.json]

Each profile (bench/wan/link.py) is a link between a server namespace and a client namespace
through the user-space delay line. First the emulator is measured against itself (UDP round
trips; for links up to 300 Mbit/s also the rate of a UDP flood), then its trials run
interleaved, ``--repeats`` times, in the order listed in PLANS:

- tcp, grpc: ``bench/streams.py``, one fresh connection carrying the model down and back up
  ``--rounds`` times, fedsilo's pattern (raw TCP from the buffer; grpcio 1 MiB messages);
- fedsilo: ``fl-server`` in the server namespace and ``fl-client`` in the client's,
  ``--rounds`` rounds of NoopTask (seeded random weights); download = ``round_started`` to
  ``model_received``, upload = ``model_received`` to ``update_received``;
- flower: Flower 1.42's legacy gRPC server and one client (bench/peers/flower_bench.py, its
  own venv), the same model and rounds; rounds 2.. only (its round 1 waits for the client).

A trial's name carries the TCP settings it ran under when they are not the profile's own:
``@stock`` (Linux's default buffers: tcp_wmem max 4 MiB, tcp_rmem max 6 MiB), ``@cubic``,
``@no-idle-restart`` (net.ipv4.tcp_slow_start_after_idle = 0), ``@linux-default`` (stock
buffers and Linux's default net.core.rmem_max/wmem_max, 212,992), ``+rcvbuf`` (the client
channel asks for a 32 MiB SO_RCVBUF through grpc.tcp_receive_buffer_size). Figures are Mbit/s of the
model's bytes: round 1 apart, then the median of rounds 2..; each ratio is taken within each
repetition (bench/harness.py). Needs root; prints one line and exits 0 where it cannot run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import streams
from bench.harness import (
    Conditions,
    Placement,
    cell,
    interleave,
    markdown_table,
    ratios,
    summary,
    write_report,
)
from bench.peers import flower_bench
from bench.transfer_bench import fedsilo_job
from bench.wan import probe
from bench.wan.link import BUFFERS, PROFILES, Link, Profile, available, ensure_delayline

MIB = 1 << 20
DEFAULT_MIB = {"1g-50ms": 256.0, "200m-80ms-loss": 64.0}
PORTS = itertools.count(50100)  # a fresh server port per job: no TIME_WAIT left in the way


@dataclass(frozen=True)
class Trial:
    """One measured thing: what runs, under which TCP settings, on how many bytes."""

    name: str
    kind: str  # tcp, grpc, fedsilo, flower
    buffers: str = "32mib"
    congestion_control: str | None = None  # None: the profile's
    restart_after_idle: bool = True  # net.ipv4.tcp_slow_start_after_idle, Linux's default 1
    mib: float | None = None  # None: the profile's model size
    rounds: int | None = None  # None: --rounds
    rcvbuf: int | None = None  # grpc only: grpc.tcp_receive_buffer_size on the client


PLANS: dict[str, list[Trial]] = {
    "1g-50ms": [
        Trial("tcp@stock", "tcp", buffers="stock"),
        Trial("fedsilo@stock", "fedsilo", buffers="stock"),
        Trial("tcp", "tcp"),
        Trial("grpc", "grpc"),
        Trial("fedsilo", "fedsilo"),
        Trial("flower", "flower"),
        Trial("fedsilo@no-idle-restart", "fedsilo", restart_after_idle=False),
        # what a daemon could set itself: grpcio's one socket-buffer option, on a stock host
        Trial("grpc@linux-default", "grpc", buffers="linux-default", mib=32, rounds=2),
        Trial(
            "grpc@linux-default+rcvbuf",
            "grpc",
            buffers="linux-default",
            mib=32,
            rounds=2,
            rcvbuf=32 * MIB,
        ),
    ],
    # BBR: with 0.1 % random loss, cubic holds one connection to a few Mbit/s (tcp@cubic)
    "200m-80ms-loss": [
        Trial("tcp", "tcp", buffers="stock"),
        Trial("grpc", "grpc", buffers="stock"),
        Trial("fedsilo", "fedsilo", buffers="stock"),
        Trial("flower", "flower", buffers="stock"),
        Trial("tcp@cubic", "tcp", buffers="stock", congestion_control="cubic", mib=16, rounds=1),
    ],
}
STEADY = ("down_mbit", "up_mbit")
RATIOS: dict[str, list[tuple[str, str]]] = {
    "1g-50ms": [
        *((f"fedsilo.{f}", f"{peer}.{f}") for f in STEADY for peer in ("tcp", "grpc", "flower")),
        *((f"fedsilo.{f}_round1", f"tcp.{f}_round1") for f in STEADY),
        ("flower.round_s", "fedsilo.round_s"),
        *((f"{t}.{f}", f"{t}@stock.{f}") for t in ("tcp", "fedsilo") for f in STEADY),
        *((f"fedsilo@no-idle-restart.{f}", f"fedsilo.{f}") for f in STEADY),
        *((f"grpc@linux-default+rcvbuf.{f}", f"grpc@linux-default.{f}") for f in STEADY),
    ],
    "200m-80ms-loss": [
        *((f"fedsilo.{f}", f"{peer}.{f}") for f in STEADY for peer in ("tcp", "grpc", "flower")),
        *((f"fedsilo.{f}_round1", f"tcp.{f}_round1") for f in STEADY),
        ("flower.round_s", "fedsilo.round_s"),
        *((f"tcp@cubic.{f}_round1", f"tcp.{f}_round1") for f in STEADY),
    ],
}


def mbit(seconds: dict[str, list[float]], total: int, first_measured: int) -> dict[str, float]:
    """Mbit/s of each way: round 1 (when measured) apart, and the median of the later rounds."""
    figures = {}
    for way in ("down", "up"):
        times = seconds[f"{way}_s"]
        if first_measured == 1:
            figures[f"{way}_mbit_round1"] = total * 8 / times[0] / 1e6
            times = times[1:]
        if times:
            figures[f"{way}_mbit"] = total * 8 / statistics.median(times) / 1e6
    return figures


class Runner:
    """Runs the trials of one profile on its link."""

    def __init__(self, link: Link, profile: Profile, args: argparse.Namespace) -> None:
        self.link, self.profile, self.args = link, profile, args
        self.flower_python: Path | None = None

    def configure(self, trial: Trial) -> None:
        """Apply the trial's TCP settings on both ends of the link."""
        self.link.set_buffers(BUFFERS[trial.buffers])
        cc = trial.congestion_control or self.profile.congestion_control
        self.link.set_tcp("net.ipv4.tcp_congestion_control", cc)
        self.link.set_tcp("net.ipv4.tcp_slow_start_after_idle", str(int(trial.restart_after_idle)))

    def placement(self) -> Placement:
        """The server in its namespace on a fresh port, the client in its own."""
        link = self.link
        return Placement(
            host=link.server_address,
            port=next(PORTS),
            server_prefix=tuple(link.exec_prefix(link.server_ns)),
            client_prefix=tuple(link.exec_prefix(link.client_ns)),
        )

    def run(self, trial: Trial) -> dict[str, float]:
        """Run one trial; its figures."""
        self.configure(trial)
        mib = trial.mib or self.args.mib[self.profile.name]
        rounds = trial.rounds or self.args.rounds
        total = int(mib * MIB)
        place = self.placement()
        if trial.kind in ("tcp", "grpc"):
            seconds = streams.measure(
                trial.kind,
                total,
                rounds,
                host=place.host,
                server_prefix=place.server_prefix,
                client_prefix=place.client_prefix,
                rcvbuf=trial.rcvbuf,
            )
            return mbit(seconds, total, 1)
        with tempfile.TemporaryDirectory(prefix=f"wan-{trial.kind}-") as tmp:
            if trial.kind == "fedsilo":
                job = fedsilo_job(mib, Path(tmp), rounds=rounds, placement=place, timeout=1800)
                figures = mbit(job, total, 1)
                figures["round_s"] = statistics.median(job["round_s"][1:])
            else:
                if self.flower_python is None:
                    self.flower_python = flower_bench.ensure_venv()
                job = flower_bench.run_job(
                    self.flower_python, mib, 1, rounds, workdir=Path(tmp), timeout=1800,
                    placement=place,
                )  # fmt: skip
                figures = mbit(job, total, 2)
                figures["round_s"] = statistics.median(job["round_s"])
        return figures


# TCP's payload per packet on the emulated link: 1,448 bytes (MSS with timestamps) of 1,538
# (IP packet 1,500 + the delay line's 38 bytes of Ethernet framing)
GOODPUT = 1448 / 1538


def steady_tcp_mbit(link: Link, size: int) -> float:
    """Mbit/s of the second half of one raw TCP transfer of ``size`` bytes, server to client,
    on a fresh connection (iperf-like: slow start is over by then)."""
    seconds = streams.measure(
        "tcp",
        size,
        1,
        host=link.server_address,
        server_prefix=link.exec_prefix(link.server_ns),
        client_prefix=link.exec_prefix(link.client_ns),
    )["down_second_half_s"][0]
    return (size - size // 2) * 8 / seconds / 1e6


def faithfulness(link: Link, profile: Profile) -> dict[str, Any]:
    """The emulator against itself: UDP round trips; the steady rate of raw TCP (the second
    half of a transfer of 6 s of the link's rate, 32 MiB buffers); up to 300 Mbit/s also a UDP
    flood at 1.25 x the rate."""
    link.set_buffers(BUFFERS["stock"])
    link.set_tcp("net.ipv4.tcp_congestion_control", profile.congestion_control)
    trips = probe.rtt(link, count=30)
    found: dict[str, Any] = {"rtt_ms": summary(trips), "rtt_configured_ms": profile.rtt_ms}
    link.set_buffers(BUFFERS["32mib"])
    found["tcp_steady_mbit"] = steady_tcp_mbit(link, int(profile.rate_mbit * 1e6 / 8 * 6))
    found["tcp_line_goodput_mbit"] = profile.rate_mbit * GOODPUT
    if profile.rate_mbit <= 300:  # a Python sender cannot flood faster here
        offered = profile.rate_mbit * 1.25
        found["udp_offered_mbit"] = offered
        found["udp_received_mbit"] = probe.rate(link, offered, seconds=2.0)
    return found


def check_profile(profile: Profile, repeats: int) -> dict[str, Any]:
    """Only the emulator's self-check, ``repeats`` times on one link; with its counters."""
    conditions = Conditions()
    with Link(profile) as link:
        runs = [faithfulness(link, profile) for _ in range(repeats)]
    return {"runs": runs, "emulator": link.stats, "conditions": conditions.end().as_dict()}


def run_profile(profile: Profile, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the link, then run the profile's trials interleaved; figures and ratios."""
    conditions = Conditions()
    with Link(profile) as link:
        checks = faithfulness(link, profile)
        print(f"{profile.name}: emulator check {checks}", flush=True)
        runner = Runner(link, profile, args)
        repetitions = interleave(
            [(trial.name, lambda t=trial: runner.run(t)) for trial in PLANS[profile.name]],
            args.repeats,
            progress=lambda rep, name, fig: print(
                f"{profile.name} {rep + 1} {name}: {fig}", flush=True
            ),
        )
    checks["emulator"] = link.stats
    return {
        "profile": profile.describe(),
        "model_mib": args.mib[profile.name],
        "rounds": args.rounds,
        "faithfulness": checks,
        "figures": {
            f"{trial}.{name}": summary([rep[trial][name] for rep in repetitions])
            for trial in repetitions[0]
            for name in repetitions[0][trial]
        },
        "ratios": [ratios(repetitions, top, bottom) for top, bottom in RATIOS[profile.name]],
        "repetitions": repetitions,
        "conditions": conditions.end().as_dict(),
    }


def print_profile(name: str, result: dict[str, Any]) -> None:
    """Print one profile's tables in Markdown."""
    print(f"\n### {name}: {result['profile']}; model {result['model_mib']:g} MiB\n")
    print(f"emulator: {result['faithfulness']}\n")
    rows = [
        [key, cell(value, 1 if "mbit" in key else 3)] for key, value in result["figures"].items()
    ]
    print(markdown_table(["trial.figure", "median [min, max]"], rows))
    print()
    rows = [[ratio["of"], cell(ratio, 2, " x")] for ratio in result["ratios"]]
    print(markdown_table(["ratio (within each repetition)", "median [min, max]"], rows))
    print(f"\n{result['conditions']['line']}")


def parse_sizes(text: str) -> dict[str, float]:
    """'1g-50ms=256,200m-80ms-loss=64' over the defaults."""
    sizes = dict(DEFAULT_MIB)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in PROFILES or not value:
            raise argparse.ArgumentTypeError(
                f"--mib: PROFILE=MIB with a profile of {list(PROFILES)}"
            )
        sizes[name] = float(value)
    return sizes


def main() -> int:
    """Run the selected profiles; print and write the figures; exit 0 with a line if no root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per job (>= 2)")
    parser.add_argument("--mib", type=parse_sizes, default=dict(DEFAULT_MIB))
    parser.add_argument(
        "--check-only", action="store_true", help="only the emulator's self-check, --repeats times"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if not profiles or set(profiles) - set(PROFILES):
        parser.error(f"--profiles: choose from {list(PROFILES)}")
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be >= 2 and --repeats >= 1")
    why = available()
    if why is not None:
        print(f"bench-wan: skipped: {why}")
        return 0
    ensure_delayline()
    if args.check_only:
        checks = {name: check_profile(PROFILES[name], args.repeats) for name in profiles}
        print(json.dumps(checks, indent=2))
        write_report(args.json, checks)
        return 0
    report = {name: run_profile(PROFILES[name], args) for name in profiles}
    for name, result in report.items():
        print_profile(name, result)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
