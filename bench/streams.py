"""The ceilings of a transfer: fedsilo's pattern of rounds over raw TCP and over plain grpcio.

    python bench/streams.py serve   --kind tcp|grpc --bytes N --rounds R [--port P]
    python bench/streams.py connect --kind tcp|grpc --bytes N --rounds R --to HOST:PORT

Two processes, as fedsilo's server and client are: ``serve`` listens (in the server's network
namespace, for the WAN benchmark) and ``connect`` opens one fresh connection to it. Then, R
times, the serving side sends N bytes ("down", like a model download) and the connecting side
sends N bytes back once it has them all ("up"), exactly the pattern of a fedsilo job's rounds:
round 1's download is a fresh connection's first transfer; later ones run on a connection
that has carried data before, and has sat idle in that direction while the other way ran.

The payload is N random bytes (``os.urandom``, made before any timing), sent in 1 MiB pieces.
grpcio sends each piece as one ``bytes`` message (a copy, as fedsilo frames each chunk) on one
channel, one server-streaming call down and one client-streaming call up per round; TCP sends
straight from the buffer. A TCP receiver reads into one preallocated N-byte buffer, reused
every round; a grpcio receiver counts the messages' bytes.

Timing: the sender notes the wall clock just before its first byte (for grpcio: the channel
is connected first), the receiver just after its last; a transfer takes the receiver's minus
the sender's time (both processes read the same clock). A TCP receiver also notes when half
the bytes are in: the second half of a long transfer is past slow start (iperf's steady
rate). Each side prints JSON lines: ``{"listening": port}`` once a server listens, then per
transfer ``{"round": r, "way":
"down", "t_first": ...}`` from the sender and ``{..., "t_last": ..., "bytes": N}`` from the
receiver (TCP: with ``t_half``). Standard library and grpcio only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc

MIB = 1 << 20
OPTIONS = [
    ("grpc.max_receive_message_length", 8 * MIB),
    ("grpc.max_send_message_length", 8 * MIB),
]
SERVICE = "bench.Stream"


def say(**line: float | int | str) -> None:
    """Print one JSON line and flush it (the orchestrator reads it as it comes)."""
    print(json.dumps(line), flush=True)


def pieces(payload: bytes) -> Iterator[bytes]:
    """The payload as 1 MiB ``bytes`` messages (copies, as a framer makes them)."""
    view = memoryview(payload)
    for start in range(0, len(payload), MIB):
        yield bytes(view[start : start + MIB])


def receive(connection: socket.socket, buffer: bytearray, number: int, way: str) -> None:
    """Fill ``buffer`` (allocated and written before any timing) from the connection."""
    total = len(buffer)
    view, count, half = memoryview(buffer), 0, 0.0
    while count < total:
        got = connection.recv_into(view[count:], min(MIB, total - count))
        if got == 0:
            raise SystemExit(f"streams: connection closed after {count} of {total} bytes")
        count += got
        if not half and count >= total // 2:
            half = time.time()
    say(round=number, way=way, t_last=time.time(), t_half=half, bytes=count)


def send(connection: socket.socket, payload: bytes, number: int, way: str) -> None:
    """Send the payload; note the time of its first byte."""
    say(round=number, way=way, t_first=time.time())
    connection.sendall(payload)


def tcp_serve(port: int, total: int, rounds: int) -> None:
    """Accept one connection; per round send ``total`` bytes, then receive as many."""
    payload, buffer = os.urandom(total), bytearray(total)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(1)
        say(listening=listener.getsockname()[1])
        connection, _ = listener.accept()
        with connection:
            for number in range(1, rounds + 1):
                send(connection, payload, number, "down")
                receive(connection, buffer, number, "up")


def tcp_connect(address: tuple[str, int], total: int, rounds: int) -> None:
    """Open a fresh connection; per round receive ``total`` bytes, then send as many back."""
    payload, buffer = os.urandom(total), bytearray(total)
    with socket.create_connection(address, timeout=900) as connection:
        for number in range(1, rounds + 1):
            receive(connection, buffer, number, "down")
            send(connection, payload, number, "up")


def grpc_serve(port: int, total: int, rounds: int) -> None:
    """Serve ``rounds`` Down calls (``total`` bytes each) and as many Up calls; then stop."""
    payload = os.urandom(total)
    calls = {"down": 0, "up": 0}
    done = futures.Future[None]()

    def finished(way: str) -> None:
        calls[way] += 1
        if calls["down"] == calls["up"] == rounds:
            done.set_result(None)

    def down(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        say(round=calls["down"] + 1, way="down", t_first=time.time())
        yield from pieces(payload)
        finished("down")

    def up(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        count = sum(len(message) for message in requests)
        say(round=calls["up"] + 1, way="up", t_last=time.time(), bytes=count)
        finished("up")
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Down": grpc.unary_stream_rpc_method_handler(down),
            "Up": grpc.stream_unary_rpc_method_handler(up),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler], options=OPTIONS)
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    say(listening=bound)
    done.result(timeout=1800)
    server.stop(grace=5).wait()


def grpc_connect(address: str, total: int, rounds: int, rcvbuf: int | None = None) -> None:
    """Connect one channel; per round pull ``total`` bytes, then push as many back.

    ``rcvbuf``: the channel arg ``grpc.tcp_receive_buffer_size`` (SO_RCVBUF of the channel's
    socket), the one socket buffer grpcio lets a program set; None leaves it to the kernel.
    """
    payload = os.urandom(total)
    options = OPTIONS + ([] if rcvbuf is None else [("grpc.tcp_receive_buffer_size", rcvbuf)])
    with grpc.insecure_channel(address, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        pull = channel.unary_stream(f"/{SERVICE}/Down")
        push = channel.stream_unary(f"/{SERVICE}/Up")
        for number in range(1, rounds + 1):
            count = sum(len(message) for message in pull(b"", timeout=900))
            say(round=number, way="down", t_last=time.time(), bytes=count)
            say(round=number, way="up", t_first=time.time())
            push(pieces(payload), timeout=900)


# ---------------------------------------------------------------------- orchestrator


def _first_line(process: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    """The first JSON line ``process`` prints, within ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise RuntimeError(f"streams: no line from {process.args} within {timeout:g}s")
    parsed: dict[str, float] = json.loads(line)
    return parsed


def measure(
    kind: str,
    total: int,
    rounds: int = 1,
    *,
    host: str = "127.0.0.1",
    server_prefix: Sequence[str] = (),
    client_prefix: Sequence[str] = (),
    rcvbuf: int | None = None,
    timeout: float = 1800.0,
) -> dict[str, list[float]]:
    """Seconds of every transfer of ``rounds`` rounds: {"down_s": [...], "up_s": [...]}.

    The serving side runs under ``server_prefix`` and is dialled at ``host``; the connecting
    side runs under ``client_prefix``; ``rcvbuf`` is grpc's client receive buffer (grpc only).
    """
    if total <= 0 or rounds <= 0:
        raise ValueError(f"streams: bytes and rounds must be > 0 (got {total}, {rounds})")
    script = [sys.executable, str(Path(__file__).resolve())]
    common = ["--kind", kind, "--bytes", str(total), "--rounds", str(rounds)]
    extra = [] if rcvbuf is None else ["--rcvbuf", str(rcvbuf)]
    server = subprocess.Popen(
        [*server_prefix, *script, "serve", *common], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(_first_line(server, 60)["listening"])
        client = subprocess.run(
            [*client_prefix, *script, "connect", *common, *extra, "--to", f"{host}:{port}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        server_out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    if client.returncode != 0 or server.returncode != 0:
        raise RuntimeError(
            f"streams {kind}: exit {server.returncode}/{client.returncode}: {client.stderr[-2000:]}"
        )
    lines = [json.loads(raw) for raw in (server_out + client.stdout).splitlines() if raw]
    seconds = {f"{way}_s": _seconds(lines, way, rounds, total) for way in ("down", "up")}
    if kind == "tcp":  # the receiver's own clock: the second half of each transfer
        for way in ("down", "up"):
            ends = sorted((x["round"], x) for x in lines if x.get("way") == way and "t_last" in x)
            seconds[f"{way}_second_half_s"] = [x["t_last"] - x["t_half"] for _, x in ends]
    return seconds


def _seconds(lines: list[dict[str, float]], way: str, rounds: int, total: int) -> list[float]:
    """Receiver's last byte minus sender's first, per round, for one direction."""
    first = {
        line["round"]: line["t_first"]
        for line in lines
        if line.get("way") == way and "t_first" in line
    }
    last = {line["round"]: line for line in lines if line.get("way") == way and "t_last" in line}
    seconds = []
    for number in range(1, rounds + 1):
        if last[number]["bytes"] != total:
            raise RuntimeError(f"streams {way} round {number}: {last[number]['bytes']} of {total}")
        seconds.append(float(last[number]["t_last"]) - float(first[number]))
    return seconds


def main() -> int:
    """Parse the role and run it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["serve", "connect"])
    parser.add_argument("--kind", choices=["tcp", "grpc"], required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="serve: the port (0: any free one)")
    parser.add_argument("--to", help="connect: HOST:PORT of the serving side")
    parser.add_argument("--rcvbuf", type=int, help="connect, grpc: grpc.tcp_receive_buffer_size")
    args = parser.parse_args()
    if args.bytes <= 0 or args.rounds <= 0:
        parser.error("--bytes and --rounds must be > 0")
    if args.role == "serve":
        serve = tcp_serve if args.kind == "tcp" else grpc_serve
        serve(args.port, args.bytes, args.rounds)
        return 0
    if not args.to or ":" not in args.to:
        parser.error("connect needs --to HOST:PORT")
    if args.kind == "tcp":
        host, port = args.to.rsplit(":", 1)
        tcp_connect((host, int(port)), args.bytes, args.rounds)
    else:
        grpc_connect(args.to, args.bytes, args.rounds, args.rcvbuf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
