"""The emulator measured against itself: round-trip time and rate through a Link, over UDP.

    python bench/wan/probe.py echo --port P --seconds S        (server namespace)
    python bench/wan/probe.py ping --to HOST:PORT --count N      (client namespace)
    python bench/wan/probe.py sink --port P --seconds S          (server namespace)
    python bench/wan/probe.py blast --to HOST:PORT --mbit R --seconds S

``ping`` sends N small datagrams one at a time and prints the round trips (ms). ``blast`` sends
1,400-byte datagrams paced at R Mbit/s (of IP packets) for S seconds; ``sink`` counts what
arrives and prints the rate at which it arrived, between its first and last datagram, in link
bytes (IP packet + the emulator's 38 bytes of framing, so it compares with the link's rate).
UDP, so no congestion control stands between the figure and the link. ``rtt()`` and
``rate()`` run a pair of them in a Link's namespaces. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAYLOAD = 1400
IP_UDP_HEADERS = 28
FRAMING = 38  # delayline's default --overhead


def echo(port: int, seconds: float) -> None:
    """Send every datagram back until ``seconds`` pass without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.settimeout(seconds)
        print(json.dumps({"listening": port}), flush=True)
        try:
            while True:
                data, peer = sock.recvfrom(65536)
                sock.sendto(data, peer)
        except TimeoutError:
            return


def ping(address: tuple[str, int], count: int) -> None:
    """Print the round trips (ms) of ``count`` datagrams sent one at a time, and how many
    were lost (no answer within 2 s; a lossy link drops some)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        trips, lost = [], 0
        for index in range(count):
            tag = index.to_bytes(4, "big") * 8
            started = time.perf_counter()
            sock.sendto(tag, address)
            try:
                while sock.recv(65536) != tag:  # a late answer to an earlier ping
                    pass
            except TimeoutError:
                lost += 1
                continue
            trips.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.005)
        print(json.dumps({"rtt_ms": trips, "lost": lost}), flush=True)


def sink(port: int, seconds: float) -> None:
    """Count datagrams until none came for 1 s (or ``seconds`` passed); print the rate."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", port))
        print(json.dumps({"listening": port}), flush=True)
        sock.settimeout(seconds)
        first = last = 0.0
        packets = size = 0
        buffer = bytearray(65536)
        try:
            while True:
                got = sock.recv_into(buffer)
                last = time.perf_counter()
                if packets == 0:
                    first = last
                    sock.settimeout(1.0)
                packets += 1
                size = got
        except TimeoutError:
            pass
    link_bytes = (packets - 1) * (size + IP_UDP_HEADERS + FRAMING)  # the first opens the clock
    rate = link_bytes * 8 / (last - first) / 1e6 if packets > 1 and last > first else 0.0
    print(json.dumps({"packets": packets, "mbit_s": rate}), flush=True)


def blast(address: tuple[str, int], mbit: float, seconds: float) -> None:
    """Send 1,400-byte datagrams paced at ``mbit`` Mbit/s of IP packets for ``seconds``."""
    interval = (PAYLOAD + IP_UDP_HEADERS) * 8 / (mbit * 1e6)
    data = bytes(PAYLOAD)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        started = time.perf_counter()
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) / interval)
            while sent < due:
                # ENOBUFS: the device queue is full; the datagram is lost like on a link
                with contextlib.suppress(OSError):
                    sock.sendto(data, address)
                sent += 1
            time.sleep(0.001)
    print(json.dumps({"sent": sent}), flush=True)


def _pair(
    server: list[str], client: list[str], timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a serving and a sending probe; return the last JSON line of each."""
    listener = subprocess.Popen(server, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        opened = listener.stdout.readline()
        if not opened:
            raise RuntimeError(f"probe did not start: {server}")
        sender = subprocess.run(client, capture_output=True, text=True, timeout=timeout, check=True)
        served, _ = listener.communicate(timeout=timeout)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=10)
    lines = served.splitlines()
    return json.loads(lines[-1]) if lines else {}, json.loads(sender.stdout.splitlines()[-1])


def _script(ns_prefix: list[str]) -> list[str]:
    return [*ns_prefix, sys.executable, str(Path(__file__).resolve())]


def rtt(link: Any, count: int = 20, port: int = 9100) -> list[float]:
    """Round trips (ms) of ``count`` small datagrams from the client to the server and back."""
    _, pinged = _pair(
        [*_script(link.exec_prefix(link.server_ns)), "echo", "--port", str(port), "--seconds", "3"],
        [
            *_script(link.exec_prefix(link.client_ns)),
            "ping",
            "--to",
            f"{link.server_address}:{port}",
            "--count",
            str(count),
        ],
        timeout=30 + count * 0.5,
    )
    trips: list[float] = pinged["rtt_ms"]
    return trips


def rate(link: Any, mbit: float, seconds: float = 1.0, port: int = 9101) -> float:
    """Mbit/s (link bytes) at which UDP sent at ``mbit`` from the client reaches the server."""
    received, _ = _pair(
        [
            *_script(link.exec_prefix(link.server_ns)),
            "sink",
            "--port",
            str(port),
            "--seconds",
            "10",
        ],
        [
            *_script(link.exec_prefix(link.client_ns)),
            "blast",
            "--to",
            f"{link.server_address}:{port}",
            "--mbit",
            f"{mbit:g}",
            "--seconds",
            f"{seconds:g}",
        ],
        timeout=30 + seconds,
    )
    return float(received["mbit_s"])


def main() -> int:
    """Parse the role and run it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["echo", "ping", "sink", "blast"])
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--to", default="")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--mbit", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    if args.role in ("ping", "blast"):
        host, _, port = args.to.rpartition(":")
        if not host:
            parser.error(f"{args.role} needs --to HOST:PORT")
        target = (host, int(port))
        if args.role == "ping":
            ping(target, args.count)
        else:
            blast(target, args.mbit, args.seconds)
    elif args.role == "echo":
        echo(args.port, args.seconds)
    else:
        sink(args.port, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
