"""A bare gRPC server that reads its upload streams more slowly than clients send: its memory.

    python window_peer.py '<options as JSON>' <seconds per message>

Prints ``port <n>`` once serving, then answers one command per stdin line: ``peak`` (the most
KiB it has been resident above what it was when it began serving, sampled every 2 ms),
``total`` (the bytes of the streams that ended), ``quit``. Each handler waits the given time
after every message, a decoder slower than the network, so that every stream's receive window
fills. Run by tests/server/test_receive_window.py in its own process, so that nothing but the
server's buffers moves its memory.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from fedsilo.server.allocator import tune_for_streams

MIB = 1 << 20


def resident_kib() -> int:
    """Return this process's resident set in KiB."""
    found = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found.group(1))


def main() -> None:
    """Serve until ``quit``; see the module docstring."""
    tune_for_streams(MIB)  # as fl-server does
    options = [tuple(option) for option in json.loads(sys.argv[1])]
    pause = float(sys.argv[2])
    lock = threading.Lock()
    received = [0]  # bytes of the streams that ended
    peak = [0]
    stopped = threading.Event()

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        total = 0
        for message in requests:
            total += len(message)
            stopped.wait(pause)  # the slow decoder (never set while streams run)
        with lock:
            received[0] += total
        yield b"done"

    method = grpc.stream_stream_rpc_method_handler(
        upload, request_deserializer=bytes, response_serializer=bytes
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        handlers=[grpc.method_handlers_generic_handler("peer.Window", {"Upload": method})],
        options=[("grpc.max_receive_message_length", 4 * MIB), *options],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    base = resident_kib()

    def sample() -> None:
        while not stopped.wait(0.002):
            peak[0] = max(peak[0], resident_kib() - base)

    threading.Thread(target=sample, daemon=True).start()
    print(f"port {port}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "peak":
            print(peak[0], flush=True)
        elif command == "total":
            with lock:
                print(received[0], flush=True)
        elif command == "quit":
            break
    stopped.set()
    server.stop(0)


if __name__ == "__main__":
    main()
