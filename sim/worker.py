"""A local backend's worker process: ``python -m fedsilo.sim.worker FD SETTINGS_JSON``.

It hosts a share of the simulated clients (``ClientHost``) and speaks envelopes of wire bytes
with the driver over the socket ``FD`` (``sim/local.py``). It exits on QUIT, or when the
driver's end closes. Ctrl-C is the driver's to handle: the worker ignores SIGINT and follows
the driver out when its socket closes.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection

from fedsilo.client.protocol import LocalSettings
from fedsilo.sim.frames import Kind, seal, unseal
from fedsilo.sim.host import ClientHost, HostSettings


def serve(conn: Connection, local: LocalSettings) -> None:
    """Host clients for the driver at the other end of ``conn`` until QUIT or EOF."""
    send_lock = threading.Lock()  # the clients' heartbeat threads send too

    def send(envelope: bytes) -> None:
        with send_lock:
            conn.send_bytes(envelope)

    host = ClientHost(local, lambda index, frame: send(seal(Kind.FRAME, index, frame)))
    while True:
        try:
            kind, index, payload = unseal(conn.recv_bytes())
        except EOFError:
            return
        if kind is Kind.START:
            send(seal(Kind.HELLO, index, host.start(index)))
        elif kind in (Kind.FRAME, Kind.ADOPT):
            handle = host.deliver if kind is Kind.FRAME else host.adopt
            failure = handle(index, payload)
            if failure is not None:
                send(seal(Kind.FAILED, index, failure.to_json()))
        elif kind is Kind.END:
            send(seal(Kind.DONE, index))
        elif kind is Kind.QUIT:
            return


def main(argv: Sequence[str]) -> int:
    """Entry point: set threads and logging as the driver says, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, raw = argv
    local = HostSettings.from_json(raw).apply()
    with Connection(int(fd)) as conn:
        try:
            serve(conn, local)
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the driver is gone
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
