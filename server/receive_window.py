"""Bound what the server holds of uploads in flight: a fixed HTTP/2 receive window per stream.

gRPC's default grows each stream's receive window with its bandwidth-delay estimate (the BDP
probe). When the server decodes more slowly than its clients send (many uploads at once on a
busy host), every stream fills its window and the server holds those bytes: measured on a bare
grpcio server (16 loopback streams of 1 MiB messages into a consumer writing files, 2-core
machine at load 10-15), 255-568 MiB above the idle process with the BDP probe, 16-35 MiB per
stream; and in bench/aggregation_bench.py (16 x 256 MiB) 1,324 MiB peak RSS, of which about
300 MiB were these buffers, against 1,109 MiB with a fixed window.

A fixed window bounds each stream's share. One budget (``--receive-budget-mib``, 16 MiB by
default) is divided among the uploads the job expects at once, so that their windows together
stay within it. A window caps one stream at window / RTT: a job with one client gets all of it
(16 MiB: 2.7 Gbit/s at 50 ms RTT), a job of two 8 MiB each, of 16 or more 1 MiB each (168
Mbit/s each at 50 ms; raise the budget for many members on long links, deploy/README.md). Each
stream holds about its window plus 4 MiB of messages (the one admitted past the window, the one
being read, its copy). A job that admits more uploads at once than it declares
(``clients_per_round``, else ``start_clients`` or ``min_clients``) holds that many windows: the
bound follows the config.
"""

from __future__ import annotations

from fedsilo.server.config import ServerConfig

MIN_WINDOW_BYTES = 1 << 20  # below this a 1 MiB chunk takes two window updates


def expected_uploads(config: ServerConfig) -> int:
    """Return how many uploads the job expects at once: its clients per round."""
    declared = config.clients_per_round or max(config.min_clients, config.start_clients or 0)
    return max(1, min(declared, config.max_clients))


def stream_window(config: ServerConfig) -> int:
    """Return the receive window of each stream: the job's budget shared by its uploads."""
    budget = config.receive_budget_mib << 20
    return max(MIN_WINDOW_BYTES, budget // expected_uploads(config))


def receive_options(window: int) -> list[tuple[str, int]]:
    """Return the gRPC server options that fix every stream's receive window at ``window``."""
    return [
        ("grpc.http2.bdp_probe", 0),  # else the window grows past ``window`` with the estimate
        ("grpc.http2.lookahead_bytes", window),
    ]
