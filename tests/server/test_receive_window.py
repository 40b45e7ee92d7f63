"""The server bounds what uploads in flight hold of its memory: a fixed receive window per stream.

The measured test drives real gRPC: a bare server (tests/server/window_peer.py, in its own
process) with fl-server's receive options reads its streams more slowly than 8 clients push
1 MiB messages, so every stream's window fills; its peak memory above idle is those windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from fedsilo.server.config import ServerConfig
from fedsilo.server.receive_window import (
    MIN_WINDOW_BYTES,
    expected_uploads,
    receive_options,
    stream_window,
)

MIB = 1 << 20
PEER = Path(__file__).with_name("window_peer.py")


def job(clients: int, budget_mib: int = 16) -> ServerConfig:
    return ServerConfig(
        job_id=1,
        insecure=True,
        min_clients=clients,
        max_clients=1000,
        receive_budget_mib=budget_mib,
    )


def test_the_budget_is_shared_by_the_expected_uploads():
    assert stream_window(job(4)) == 4 * MIB
    assert stream_window(job(1)) == 16 * MIB  # one upload gets it all: long fat links
    assert stream_window(job(16)) == stream_window(job(1000)) == MIN_WINDOW_BYTES
    assert stream_window(job(10, budget_mib=160)) == 16 * MIB  # many members on long links


def test_expected_uploads_follow_the_config():
    assert expected_uploads(ServerConfig(job_id=1, insecure=True, min_clients=16)) == 16
    starting = ServerConfig(job_id=1, insecure=True, min_clients=2, start_clients=10)
    assert expected_uploads(starting) == 10
    per_round = ServerConfig(
        job_id=1, insecure=True, min_clients=2, clients_per_round=5, max_clients=4
    )
    assert expected_uploads(per_round) == 4  # never more than may be connected


class Peer:
    """The window peer's process: ``ask`` sends one command and reads its answer."""

    def __init__(self, options: list[tuple[str, int]], pause: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PEER), json.dumps(options), str(pause)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self._line().split()[1])

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the window peer ended"
        return line

    def ask(self, command: str) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return int(self._line())

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def push(port: int, messages: int) -> None:
    """Stream ``messages`` messages of 1 MiB on a connection of its own."""
    payload = bytes(MIB)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 4 * MIB)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.stream_stream(
            "/peer.Window/Upload", request_serializer=bytes, response_deserializer=bytes
        )
        assert list(call(iter([payload] * messages), timeout=120)) == [b"done"]


def peak_held(options: list[tuple[str, int]], streams: int, messages: int) -> int:
    """The most bytes a server that reads slower than ``streams`` uploads arrive holds."""
    peer = Peer(options, pause=0.02)
    try:
        with ThreadPoolExecutor(streams) as pool:
            for done in [pool.submit(push, peer.port, messages) for _ in range(streams)]:
                done.result(timeout=120)
        assert peer.ask("total") == streams * messages * MIB  # every byte arrived
        return peer.ask("peak") * 1024
    finally:
        peer.close()


def test_slowly_read_uploads_hold_at_most_their_windows():
    streams = 8
    window = stream_window(job(streams))
    held = peak_held(receive_options(window), streams, messages=32)
    # Each stream: its window, the message admitted past it, the one being read and its copy;
    # then the threads' own. Measured (2-core machine, load 12): 46-51 MiB with the fixed
    # window of 2 MiB; 166-182 MiB with gRPC's default (the BDP probe grows every window).
    assert held <= streams * (window + 4 * MIB) + 16 * MIB, f"{held / MIB:.1f} MiB held"
