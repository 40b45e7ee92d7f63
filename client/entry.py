"""fl-client's console script: gRPC's C core keeps its informational lines to itself.

Those lines (``I... ssl_transport_security.cc] Handshake failed ...``) repeat in gRPC's words
what the client's own one-line error already says, and are written by gRPC's threads whenever
they like: after that line, too, which must stay the last. ``GRPC_VERBOSITY`` is read once, when
grpc loads, so it is set here, before anything imports grpc; an operator's own value wins.
Warnings and errors of the C core still reach the log, as JSON lines (``routed_stderr``).
"""

from __future__ import annotations

import os
from typing import NoReturn


def entry_point() -> NoReturn:
    """Run fl-client with gRPC's C core logging errors only (unless GRPC_VERBOSITY is set)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from fedsilo.client.cli import entry_point as run_client

    run_client()
